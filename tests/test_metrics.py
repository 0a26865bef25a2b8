"""Task metrics chosen from the references; each scores 0–100; data a metric cannot score is refused."""

import pytest

from edgeq.errors import ConfigError
from edgeq.metrics import check, choose, normalise, parse_json_value, score

ACTIONS = ['{"action": "land"}', '{"action": "set_speed", "speed_m_s": 10.0}', '{"action": "photo"}']
SENTENCES = ["Replace the propellers every 50 flight hours.", "Clean the air filters every 20 flight hours."]


def test_the_metric_follows_the_references():
    assert choose(ACTIONS)[0] == "json"
    assert choose(["positive", "Negative", "neutral"])[0] == "exact"
    assert choose(SENTENCES)[0] == "chrf"
    assert choose(SENTENCES, forced="exact") == ("exact", "forced with --metric")
    assert "at most 4 words" in choose(["yes", "no"])[1]


def test_json_compares_parsed_values_and_counts_unparseable():
    answers = ['{"action":"land"}', 'ok {"speed_m_s": 10, "action": "set_speed"}', "I cannot do that"]
    r = score(answers, ACTIONS, "json")
    assert r == {"metric": "json", "score": pytest.approx(200 / 3), "n": 3, "unparseable_pct": pytest.approx(100 / 3)}
    assert parse_json_value('{broken {"a": [1, 2]}') == {"a": [1, 2]} and parse_json_value("no json") is None


def test_exact_normalises_case_space_and_edge_punctuation():
    assert normalise("  Positive. ") == normalise("positive") == "positive"
    assert score(["Positive.", "neg", " NEUTRAL "], ["positive", "negative", "neutral"], "exact")[
        "score"
    ] == pytest.approx(200 / 3)


def test_chrf_rewards_closer_text_and_is_100_for_identical():
    assert score(SENTENCES, SENTENCES, "chrf")["score"] == pytest.approx(100.0)
    close = score(["Replace the propellers every 40 flight hours.", "Clean filters every 20 hours."], SENTENCES, "chrf")
    far = score(["I do not know.", "Ask someone else."], SENTENCES, "chrf")
    assert 100 > close["score"] > far["score"] >= 0


def test_references_a_metric_cannot_score_are_refused_with_their_lines(tmp_path):
    with pytest.raises(ConfigError) as e:
        check([SENTENCES[0], ACTIONS[0], "  "], [3, 4, 9], "json", tmp_path / "d.jsonl")
    assert e.value.problems == [
        f"{tmp_path / 'd.jsonl'}:9: the reference answer is empty",
        f"{tmp_path / 'd.jsonl'}:3: the reference answer is not a JSON object or array (metric json)",
    ]
    with pytest.raises(ConfigError) as e:
        check(SENTENCES, [1, 2], "bleu", "d.jsonl")
    assert e.value.problems == ["--metric 'bleu': expected one of json, exact, chrf"]
    check(SENTENCES, [1, 2], "chrf", "d.jsonl")  # free text is fine for chrF


def _chrf_by_hand(hyp: str, ref: str, order: int = 6, beta: float = 2.0) -> float:
    """chrF (Popović 2015) as sacrebleu computes it by default: character n-grams of 1–6 with whitespace removed,
    precision and recall averaged over the orders, then F-beta with recall weighted beta² = 4 times."""
    from collections import Counter

    h, r = hyp.replace(" ", ""), ref.replace(" ", "")
    precisions, recalls = [], []
    for n in range(1, order + 1):
        hc, rc = (
            Counter(h[i : i + n] for i in range(len(h) - n + 1)),
            Counter(r[i : i + n] for i in range(len(r) - n + 1)),
        )
        match = sum((hc & rc).values())
        precisions.append(match / sum(hc.values()))
        recalls.append(match / sum(rc.values()))
    p, rec = sum(precisions) / order, sum(recalls) / order
    return 100 * (1 + beta**2) * p * rec / (beta**2 * p + rec)


def test_chrf_is_the_answers_against_the_reference_by_hand():
    """Recall weighs four times precision: a short answer and a long reference score otherwise than swapped."""
    answer, reference = "Replace the propellers.", "Replace the propellers every 50 flight hours."
    by_hand, swapped = _chrf_by_hand(answer, reference), _chrf_by_hand(reference, answer)
    assert abs(by_hand - swapped) > 10
    assert score([answer], [reference], "chrf")["score"] == pytest.approx(by_hand, abs=1e-6)


def test_json_exact_match_ignores_key_order_and_spacing_but_not_values():
    ref = '{"action": "set_speed", "speed_m_s": 10}'
    assert score(['{"speed_m_s":10.0,"action":"set_speed"}'], [ref], "json")["score"] == 100.0
    assert score(['{"action": "set_speed", "speed_m_s": "10"}'], [ref], "json")["score"] == 0.0  # a string is not 10
    assert score(['{"action": "set_speed"}'], [ref], "json")["score"] == 0.0  # a key left out

import json
from pathlib import Path

import pytest

from edgeq.task import parse_action, score, split_prompts

EXAMPLES = Path(__file__).parent.parent / "examples" / "drone"


def test_parse_first_json_object_anywhere_in_the_answer():
    assert parse_action('{"action": "land"}') == {"action": "land"}
    assert parse_action('Sure! {"action": "hover", "seconds": 5} done') == {"action": "hover", "seconds": 5}
    assert parse_action('{broken {"action": "photo"}') == {"action": "photo"}
    assert parse_action("[1, 2]") is None
    assert parse_action("no json here") is None
    assert parse_action('{"action": "land"') is None


def test_score_counts_exact_and_unparseable():
    refs = ['{"action": "land"}', '{"action": "set_speed", "speed_m_s": 10.0}', '{"action": "photo"}']
    answers = ['{"action":"land"}', '{"speed_m_s": 10, "action": "set_speed"}', "I cannot do that"]
    assert score(answers, refs) == {
        "n": 3,
        "exact_match_pct": pytest.approx(200 / 3),
        "unparseable_pct": pytest.approx(100 / 3),
    }


def test_example_task_is_large_varied_and_disjoint():
    train_p, train_r = split_prompts(f"{EXAMPLES}/train.jsonl")
    test_p, test_r = split_prompts(f"{EXAMPLES}/test.jsonl")
    assert len(train_p) >= 600 and len(test_p) >= 150
    assert not {p[-1]["content"] for p in train_p} & {p[-1]["content"] for p in test_p}
    actions = {json.loads(r)["action"] for r in test_r}
    assert actions == {
        "takeoff",
        "land",
        "return_to_home",
        "goto",
        "orbit",
        "set_speed",
        "hover",
        "photo",
        "video",
        "refuse",
    }
    reasons = {json.loads(r)["reason"] for r in test_r if json.loads(r)["action"] == "refuse"}
    assert reasons == {"low_battery", "no_fly_zone", "altitude_limit", "missing_parameter"}


def test_generator_reproduces_the_frozen_files(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", f"{EXAMPLES}/generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    monkeypatch.setattr(gen, "HERE", tmp_path)
    gen.main()
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_text() == (EXAMPLES / name).read_text()

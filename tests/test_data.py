import json

import pytest

from edgeq.data import IGNORE, load_dataset, read_jsonl, tokenize_conversation
from edgeq.errors import ConfigError, UsageError


@pytest.fixture(scope="module")
def tok(default_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model)


def _write(tmp_path, lines):
    p = tmp_path / "d.jsonl"
    p.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return p


def test_both_formats_and_loss_only_on_assistant_tokens(tmp_path, tok):
    p = _write(
        tmp_path,
        [
            {"prompt": "Land.", "response": '{"action": "land"}'},
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ]
            },
        ],
    )
    convs = read_jsonl(p)
    assert convs[0] == [{"role": "user", "content": "Land."}, {"role": "assistant", "content": '{"action": "land"}'}]
    ex = tokenize_conversation(tok, convs[0])
    full = tok.apply_chat_template(convs[0], tokenize=False)
    assert tok.decode(ex.input_ids) == full  # the rendering is exactly the chat template's
    trained = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE])
    assert trained == '{"action": "land"}<|im_end|>\n'  # the answer and the end-of-turn token that stops generation


def test_every_bad_line_is_reported_with_its_number(tmp_path):
    p = _write(
        tmp_path,
        [
            {"prompt": "ok", "response": "ok"},
            "{not json",
            {"messages": [{"role": "pilot", "content": "x"}, {"role": "assistant", "content": "y"}]},
            {"question": "x"},
            {"messages": [{"role": "user", "content": "only a question"}]},
            {"prompt": "x", "response": 3},
            "[1, 2]",
        ],
    )
    with pytest.raises(ConfigError) as e:
        read_jsonl(p)
    problems = e.value.problems
    assert len(problems) == 6
    assert problems[0].startswith(f"{p}:2: invalid JSON")
    assert f"{p}:3: messages[0]: unknown role 'pilot'" in problems[1]
    assert f"{p}:4: missing fields" in problems[2]
    assert f"{p}:5: no assistant message" in problems[3]
    assert f"{p}:6: 'prompt' and 'response' must both be strings" in problems[4]
    assert f"{p}:7: expected a JSON object" in problems[5]


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(UsageError, match="no examples"):
        read_jsonl(_write(tmp_path, ["", "  "]))
    with pytest.raises(UsageError, match="not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_long_examples_truncated_and_counted_or_rejected_under_strict(tmp_path, tok):
    p = _write(tmp_path, [{"prompt": "word " * 200, "response": "yes " * 40}, {"prompt": "a", "response": "b"}])
    ds = load_dataset(p, tok, seq_len=240)
    assert ds.truncated == 1 and all(len(e.input_ids) <= 240 for e in ds.examples)
    with pytest.raises(ConfigError) as e:
        load_dataset(p, tok, seq_len=240, strict=True)
    assert e.value.problems[0].startswith("example 1: ") and "tokens > --seq-len 240" in e.value.problems[0]


def test_the_held_out_split_is_the_seeded_tenth_and_never_trained_on(tmp_path):
    """30 examples (a blank line among them): 3 held out, the ones a Random(0) shuffle of their indices puts first;
    the two files together are the input's lines, each once."""
    import random

    from edgeq.data import split_holdout

    lines = [json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) for i in range(30)]
    src = tmp_path / "all.jsonl"
    src.write_text("\n".join(lines[:10] + [""] + lines[10:]) + "\n")
    train, test, n_train, n_test = split_holdout(src, tmp_path)
    order = list(range(30))
    random.Random(0).shuffle(order)
    expected = {lines[i] for i in order[:3]}
    held, trained = test.read_text().splitlines(), train.read_text().splitlines()
    assert (n_train, n_test) == (27, 3) and set(held) == expected and len(held) == 3
    assert not set(held) & set(trained) and sorted(held + trained) == sorted(lines)


def test_data_statistics_from_the_chat_template_by_hand(tmp_path, tok):
    """Three conversations: their lengths are the chat template's own token counts, the loss tokens each answer
    with the <|im_end|>\\n that closes its turn, the median the middle length."""
    pairs = [("Land.", '{"action": "land"}'), ("Hover at 5 m please.", "ok"), ("Go home", "Returning to home now.")]
    p = _write(tmp_path, [{"prompt": q, "response": a} for q, a in pairs])
    stats = load_dataset(p, tok, seq_len=512).stats
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs]
    rendered = [tok.apply_chat_template(c, tokenize=False) for c in convs]
    lengths = sorted(len(tok.encode(r, add_special_tokens=False)) for r in rendered)
    answers = sum(len(tok.encode(a + "<|im_end|>\n", add_special_tokens=False)) for _, a in pairs)
    assert stats == {
        "examples": 3,
        "tokens": sum(lengths),
        "max_len": lengths[2],
        "median_len": lengths[1],
        "loss_tokens": answers,
    }

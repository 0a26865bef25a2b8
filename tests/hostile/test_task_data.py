"""Task data that escaped as crashes: bad bytes, deep nesting, references the scorer cannot read."""

import json

import pytest

from edgeq.data import read_jsonl
from edgeq.errors import ConfigError
from edgeq.task import load_task
from tests.conftest import run_edgeq

GOOD = {"messages": [{"role": "user", "content": "Land."}, {"role": "assistant", "content": '{"action": "land"}'}]}


def _file(tmp_path, lines: list[bytes]):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"".join(line + b"\n" for line in lines))
    return p


def test_a_line_that_is_not_utf8_names_its_line(tmp_path):
    p = _file(tmp_path, [json.dumps(GOOD).encode(), b'{"prompt": "caf\xe9", "response": "x"}'])
    with pytest.raises(ConfigError) as e:
        read_jsonl(p)
    assert e.value.problems == [f"{p}:2: not UTF-8 (byte 15 of the line); save the file as UTF-8"]


def test_deeply_nested_json_names_its_line(tmp_path):
    p = _file(tmp_path, [b"[" * 100_000 + b"]" * 100_000])
    with pytest.raises(ConfigError) as e:
        read_jsonl(p)
    assert e.value.problems == [f"{p}:1: invalid JSON (nested too deeply)"]


def test_plain_text_references_get_a_text_metric_not_a_crash(tmp_path):
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, pilot!"}]}
    p = _file(tmp_path, [json.dumps(GOOD).encode(), json.dumps(plain).encode()])
    assert load_task(p).metric == "exact"  # mixed JSON and text, all short: normalised exact match


def test_a_metric_forced_onto_data_it_cannot_score_is_refused_before_generation(tmp_path, tiny_model):
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]}
    p = _file(tmp_path, [json.dumps(GOOD).encode(), json.dumps(plain).encode()])
    with pytest.raises(ConfigError) as e:
        load_task(p, metric="json")
    assert e.value.problems == [f"{p}:2: the reference answer is not a JSON object or array (metric json)"]
    r = run_edgeq("eval-task", "--model", tiny_model, "--data", p, "--metric", "json")
    assert r.returncode == 2 and f"{p}:2:" in r.stderr and "Traceback" not in r.stderr


def test_an_empty_reference_is_refused(tmp_path):
    empty = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}
    p = _file(tmp_path, [json.dumps(GOOD).encode(), json.dumps(empty).encode()])
    with pytest.raises(ConfigError) as e:
        load_task(p)
    assert e.value.problems == [f"{p}:2: the reference answer is empty"]


def test_build_refuses_bad_task_data_before_the_fine_tune(tmp_path, tiny_model, small_data):
    empty = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}
    test = _file(tmp_path, [json.dumps(GOOD).encode(), json.dumps(empty).encode()])
    out = tmp_path / "out"
    args = ["build", "--profile", "drone", "--base", tiny_model, "--data", small_data, "--test-data", test]
    r = run_edgeq(*args, "--out", out)
    assert r.returncode == 2 and f"{test}:2: the reference answer is empty" in r.stderr
    assert not (out / ".edgeq" / "finetune").exists() and not (out / ".edgeq" / "finetune.partial").exists()


def test_limit_stops_reading(tmp_path):
    p = _file(tmp_path, [json.dumps(GOOD).encode()] * 3 + [b"{not json"])
    assert len(read_jsonl(p, limit=3)) == 3
    with pytest.raises(ConfigError):
        read_jsonl(p)


def test_an_answer_with_no_question_is_refused(tmp_path):
    lone = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hello."}]}
    p = _file(tmp_path, [json.dumps(GOOD).encode(), json.dumps(lone).encode()])
    with pytest.raises(ConfigError) as e:
        load_task(p)
    assert e.value.problems == [f"{p}:2: no user message before the answer: nothing to answer"]


@pytest.mark.parametrize("kind", ["exact", "chrf"])
def test_eval_task_scores_labels_and_free_text(tmp_path, tiny_model, kind):
    answer = (
        "positive" if kind == "exact" else "Replace the propellers every 50 flight hours, or at once after a strike."
    )
    row = {"messages": [{"role": "user", "content": "Review: great."}, {"role": "assistant", "content": answer}]}
    p = _file(tmp_path, [json.dumps(row).encode()] * 2)
    r = run_edgeq("eval-task", "--model", tiny_model, "--data", p, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["metric"] == kind and got["n"] == 2 and 0 <= got["score"] <= 100

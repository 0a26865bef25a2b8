"""Task data that escaped as crashes: bad bytes, deep nesting, references the scorer cannot read."""

import json

import pytest

from edgeq.data import read_jsonl
from edgeq.errors import ConfigError
from edgeq.task import split_prompts
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
    assert e.value.problems == [f"{p}:1: JSON nested too deeply"]


def test_a_reference_the_scorer_cannot_read_is_refused_before_generation(tmp_path, tiny_model):
    plain = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]}
    p = _file(tmp_path, [json.dumps(GOOD).encode(), json.dumps(plain).encode()])
    with pytest.raises(ConfigError) as e:
        split_prompts(p)
    assert e.value.problems == [f"{p}:2: the reference answer is not a JSON object (the task score compares actions)"]
    r = run_edgeq("eval-task", "--model", tiny_model, "--data", p)
    assert r.returncode == 2 and f"{p}:2:" in r.stderr and "Traceback" not in r.stderr


def test_limit_stops_reading(tmp_path):
    p = _file(tmp_path, [json.dumps(GOOD).encode()] * 3 + [b"{not json"])
    assert len(read_jsonl(p, limit=3)) == 3
    with pytest.raises(ConfigError):
        read_jsonl(p)

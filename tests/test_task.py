import json
from pathlib import Path

import pytest

from edgeq.metrics import parse_json_value
from edgeq.task import load_task

EXAMPLES = Path(__file__).parent.parent / "examples" / "drone"
MAINTENANCE = Path(__file__).parent.parent / "examples" / "maintenance"
TRIAGE = Path(__file__).parent.parent / "examples" / "triage"


def test_parse_first_json_value_anywhere_in_the_answer():
    assert parse_json_value('{"action": "land"}') == {"action": "land"}
    assert parse_json_value('Sure! {"action": "hover", "seconds": 5} done') == {"action": "hover", "seconds": 5}
    assert parse_json_value('{broken {"action": "photo"}') == {"action": "photo"}
    assert parse_json_value("no json here") is None
    assert parse_json_value('{"action": "land"') is None


def test_the_drone_task_is_scored_by_parsed_json():
    task = load_task(f"{EXAMPLES}/test.jsonl", limit=3)
    assert task.metric == "json" and len(task.prompts) == 3 and task.prompts[0][-1]["role"] == "user"
    r = task.score([task.refs[0], "I cannot do that", task.refs[2].replace(" ", "")])
    assert r["score"] == pytest.approx(200 / 3) and r["unparseable_pct"] == pytest.approx(100 / 3)


def test_example_task_is_large_varied_and_disjoint():
    train, test = load_task(f"{EXAMPLES}/train.jsonl"), load_task(f"{EXAMPLES}/test.jsonl")
    train_p, test_p, test_r = train.prompts, test.prompts, test.refs
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


def test_the_free_text_example_is_scored_by_chrf_and_reproducible(tmp_path, monkeypatch):
    task = load_task(MAINTENANCE / "test.jsonl")
    assert task.metric == "chrf" and len(task.refs) >= 20
    train = load_task(MAINTENANCE / "train.jsonl")
    assert not {p[-1]["content"] for p in train.prompts} & {p[-1]["content"] for p in task.prompts}
    assert_generated(MAINTENANCE, tmp_path, monkeypatch)


def test_the_label_example_is_scored_by_exact_match_on_symptoms_training_never_shows(tmp_path, monkeypatch):
    task, train = load_task(TRIAGE / "test.jsonl"), load_task(TRIAGE / "train.jsonl")
    gen = assert_generated(TRIAGE, tmp_path, monkeypatch)
    assert task.metric == "exact" and set(task.refs) == set(train.refs) == set(gen.LABELS)
    said = [p[-1]["content"].lower() for p in train.prompts]
    asked = [p[-1]["content"].lower() for p in task.prompts]
    assert not set(said) & set(asked)
    held_out = [symptoms[-1].lower() for symptoms in gen.SYMPTOMS.values()]
    assert not any(s in p for s in held_out for p in said)
    assert sum(any(s in p for s in held_out) for p in asked) == 2 * len(gen.LABELS)  # in two wordings each
    assert task.score(list(task.refs))["score"] == 100.0 and task.score(["battery"] * len(task.refs))["score"] < 20


def assert_generated(folder: Path, tmp_path: Path, monkeypatch):
    """The example's generator writes its committed files byte for byte; returns the generator's module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", folder / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    monkeypatch.setattr(gen, "HERE", tmp_path)
    gen.main()
    for name in ("train.jsonl", "test.jsonl"):
        assert (tmp_path / name).read_text() == (folder / name).read_text()
    return gen

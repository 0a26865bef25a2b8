"""The example task's promise, end to end with the shipped defaults: fine-tuning pays at least 40 points."""

import json
import time
from pathlib import Path

import pytest

from tests.conftest import run_edgeq

pytestmark = pytest.mark.slow
DRONE = Path(__file__).parent.parent / "examples" / "drone"


def _score(*args) -> dict:
    r = run_edgeq("eval-task", "--data", DRONE / "test.jsonl", "--json", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_default_finetune_gains_40_points_within_10_minutes(tmp_path, default_model):
    base = _score()
    t = time.time()
    r = run_edgeq("finetune", "--data", DRONE / "train.jsonl", "--out", tmp_path / "ft")
    minutes = (time.time() - t) / 60
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_edgeq("merge", "--adapter", tmp_path / "ft", "--out", tmp_path / "merged")
    assert r.returncode == 0, r.stderr[-2000:]
    tuned = _score("--model", tmp_path / "merged")
    print(f"base {base['exact_match_pct']:.1f} % -> tuned {tuned['exact_match_pct']:.1f} % in {minutes:.1f} min")
    assert base["exact_match_pct"] <= 5.0
    assert tuned["exact_match_pct"] - base["exact_match_pct"] >= 40.0
    assert minutes <= 10.0

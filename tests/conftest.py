import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeq.basemodel import RANDOM_MODEL_DIMS, random_model
from edgeq.spec import PROFILE_FIELDS, STAGE_SCHEMA


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Never touch the user's cache: tests convert the default model into CI's or a temp cache."""
    if not os.environ.get("EDGEQ_CACHE"):
        os.environ["EDGEQ_CACHE"] = str(tmp_path_factory.mktemp("edgeq-cache"))


@pytest.fixture(scope="session")
def default_model():
    from edgeq.basemodel import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def source_gguf():
    from edgeq.basemodel import default_gguf_path

    return default_gguf_path()


def run_edgeq(*args, cwd=None, timeout=600):
    """Run the real console entry point in a subprocess: exit codes and stderr as a user sees them."""
    return subprocess.run(
        [sys.executable, "-m", "edgeq", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


TINY = RANDOM_MODEL_DIMS

_BOUNDS = {f.name: f for f in PROFILE_FIELDS}
# Latency budgets no machine breaches, at the profile validator's sane extremes: a test of one gate must not
# fail on another gate's timing (a busy CI machine has decoded the tiny model below the drone's 10 tok/s).
UNBREACHABLE_LATENCY = {
    "ttft_ms": _BOUNDS["ttft_ms"].maximum,
    "min_decode_tok_s": _BOUNDS["min_decode_tok_s"].minimum,
}


def make_tiny_model(out: Path, tokenizer_dir: Path, seed: int = 0, **overrides) -> Path:
    """A random-weight Llama with the default model's tokenizer: fast enough to train in a test."""
    return random_model(out, tokenizer_dir, seed, **overrides)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, default_model):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", default_model)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """The first 48 drone examples: a few optimizer steps' worth."""
    src = Path(__file__).parent.parent / "examples" / "drone" / "train.jsonl"
    out = tmp_path_factory.mktemp("data") / "train.jsonl"
    out.write_text("".join(src.read_text().splitlines(keepends=True)[:48]))
    return out


# One raw calibration measurement (calibrate.load_points' format): the valid point the hostile tests mutate.
CALIBRATION_POINT = {
    "fmt": "gguf",
    "quant": "Q8_0",
    "path": "x",
    "ctx": 256,
    "prompt": 128,
    "rss": 1e8,
    "types": {"Q8_0": 1e6},
    "dims": {
        "layers": 2,
        "hidden": 64,
        "heads": 4,
        "kv_heads": 2,
        "head_dim": 16,
        "intermediate": 128,
        "vocab": 100,
        "max_positions": 256,
        "tied": True,
    },
}


def sweep_record(candidates: list) -> dict:
    """The sweep stage's stage.json (records.StageRecord) holding a plan with these candidate rows."""
    plan = {
        "profile": "p",
        "model": "m",
        "ctx": 1,
        "prompt_tokens": 1,
        "memory_budget_mib": 1,
        "storage_budget_mib": 1,
        "calibration": "c",
        "candidates": candidates,
        "chosen": None,
    }
    return {"schema": STAGE_SCHEMA, "key": "k", "seconds": 1.0, "result": plan, "files": {}}

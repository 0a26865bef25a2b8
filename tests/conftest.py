import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeq.basemodel import RANDOM_MODEL_DIMS, random_model
from edgeq.spec import PROFILE_FIELDS, STAGE_SCHEMA


def pytest_configure(config):
    """A pytest-xdist worker runs on its own share of the cores, so torch's and llama.cpp's threads (edgeq and torch
    count the cores a process may use) never outnumber the cores: two workers each spreading threads over every
    core wait on each other (benchmarks/worker_threads.py). Set before torch loads; child processes inherit it."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else []
    if worker and count and len(usable) >= int(count):
        share = len(usable) // int(count)
        i = int(worker.removeprefix("gw"))
        os.sched_setaffinity(0, usable[i * share : (i + 1) * share])


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


def cpu_seconds_of_children() -> float:
    """CPU seconds (user + system) of every child process this one has waited for: what a command cost, whatever
    else shares the machine."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


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


# Gemma 3 as the 270M is shaped, scaled down: heads wider than hidden / heads, a window shorter than the gate's
# text, six layers so that the sixth attends globally with its own rope base, norms far from zero (HF scales by
# 1 + w: a writer that forgets the 1 is caught)
GEMMA3 = {"num_hidden_layers": 6, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 8}


def tiny_arch_model(kind: str, out: Path, tokenizer_dir: Path, **overrides) -> Path:
    """A random-weight model of one architecture (transformers' own config class) with another model's tokenizer:
    vocabulary size and bos/eos ids read from that folder's config.json, pad = eos. phi3 as Phi-4-mini is shaped:
    fused projections, ¾ of each head rotated, tied."""
    import json
    import shutil

    import torch
    import transformers

    from edgeq.spec import TOKENIZER_FILES

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM),
        "gemma3_text": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM),
        "smollm3": (transformers.SmolLM3Config, transformers.SmolLM3ForCausalLM),
        "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel),
    }[kind]
    ids = json.loads((tokenizer_dir / "config.json").read_text())
    torch.manual_seed(0)
    kw = {"n_embd": 64, "n_layer": 2, "n_head": 4} if kind == "gpt2" else dict(TINY)
    kw |= {"partial_rotary_factor": 0.75} if kind == "phi3" else {}
    kw |= GEMMA3 if kind == "gemma3_text" else {}
    kw |= {"num_hidden_layers": 4} if kind == "smollm3" else {}  # the 4th has no rotary positions
    cfg = config_cls(
        vocab_size=ids["vocab_size"],
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["eos_token_id"],
        tie_word_embeddings=True,
        **(kw | overrides),
    )
    model = model_cls(cfg)
    if kind == "gemma3_text":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.normal_(0.0, 0.5)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out / name)
    return out


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
    "runtime_fixed": 2e7,
    "runtime_kv": 1e6,
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

import os
import subprocess
import sys
from pathlib import Path

import pytest


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


TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,
}


def make_tiny_model(out: Path, tokenizer_dir: Path, seed: int = 0, **overrides) -> Path:
    """A random-weight Llama with the default model's tokenizer: fast enough to train in a test."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgeq.spec import TOKENIZER_FILES

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=49152,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
        **{**TINY, **overrides},
    )
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out / name)
    return out


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

"""Run artifacts: a GGUF through llama-cpp-python, an ONNX folder through ONNX Runtime (GenAI).

Runtime-only: never imports torch or transformers, so `edgeq bench` and `edgeq eval` of an
artifact work on a target with the runtime install. GGUF files are header-checked in Python
(ggufcheck) before llama.cpp opens them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgeq.errors import UsageError
from edgeq.spec import FORMAT_GGUF, FORMAT_ONNX

ASSETS = Path(__file__).resolve().parent / "assets"  # the tokenizer corpus and the fixed fidelity text


def artifact_format(path: str | Path) -> str:
    """gguf for a .gguf file, onnx for an ONNX Runtime GenAI folder; anything else is a usage error."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return FORMAT_GGUF
    if path.is_dir() and (path / "genai_config.json").is_file():
        return FORMAT_ONNX
    if not path.exists():
        raise UsageError("artifact not found", str(path), "pass a .gguf file or an ONNX GenAI folder")
    if path.is_dir():
        check_onnx_dir(path)
    raise UsageError(
        "unknown artifact format",
        str(path),
        "expected a .gguf file or a folder with genai_config.json (ONNX Runtime GenAI)",
    )


def artifact_bytes(path: str | Path) -> int:
    """Bytes on disk of a GGUF file or of every file in an ONNX folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def load_gguf(path: str | Path, n_ctx: int = 2048, logits_all: bool = False, n_threads: int | None = None):
    from llama_cpp import Llama

    from edgeq.ggufcheck import check_gguf

    check_gguf(path)
    return Llama(
        str(path), n_ctx=n_ctx, logits_all=logits_all, n_threads=n_threads or os.cpu_count() or 1, verbose=False
    )


def gguf_logits(path: str | Path, ids: list[int], n_threads: int | None = None) -> np.ndarray:
    """(T, vocab) logits of a GGUF for every position of `ids`."""
    llm = load_gguf(path, n_ctx=max(512, len(ids)), logits_all=True, n_threads=n_threads)
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)], dtype=np.float64)


def check_onnx_dir(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "genai_config.json").is_file():
        raise UsageError(
            "not an ONNX Runtime GenAI model folder (no genai_config.json)",
            str(path),
            "point at the folder that edgeq export --format onnx wrote",
        )
    return path


def onnx_generate(path: str | Path, ids: list[int], max_new_tokens: int = 64) -> list[int]:
    """Greedy continuation of `ids` with onnxruntime-genai; stops at the model's eos."""
    import onnxruntime_genai as og

    model = og.Model(str(check_onnx_dir(path)))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    out: list[int] = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return out


def onnx_logits(path: str | Path, ids: list[int]) -> np.ndarray:
    """(T, vocab) logits of the builder's decoder graph for a whole sequence (empty KV cache)."""
    import onnxruntime as ort

    path = check_onnx_dir(path)
    cfg = json.loads((path / "genai_config.json").read_text())
    dec = cfg["model"]["decoder"]
    sess = ort.InferenceSession(str(path / dec["filename"]), providers=["CPUExecutionProvider"])
    n = len(ids)
    feeds = {}
    for inp in sess.get_inputs():
        if inp.name == "input_ids":
            feeds[inp.name] = np.asarray([ids], dtype=np.int64)
        elif inp.name == "attention_mask":
            feeds[inp.name] = np.ones((1, n), dtype=np.int64)
        elif inp.name == "position_ids":
            feeds[inp.name] = np.arange(n, dtype=np.int64)[None]
        elif inp.name.startswith("past_key_values"):
            dtype = np.float16 if "float16" in inp.type else np.float32
            feeds[inp.name] = np.zeros((1, dec["num_key_value_heads"], 0, dec["head_size"]), dtype=dtype)
        else:
            raise UsageError(f"unexpected ONNX input {inp.name!r}", str(path))
    logits = sess.run(["logits"], feeds)[0]
    return np.asarray(logits[0], dtype=np.float64)

"""Importance matrix: activation statistics of the model on calibration data, for llama.cpp's quantizer.

For every linear layer, the mean of x² over calibration tokens for each input column (the form
llama.cpp's own imatrix tool stores and its quantizer reads): columns that carry large
activations keep more precision. Computed with the HF float model, named by GGUF tensor names.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edgeq import report, templates
from edgeq.basemodel import load_tokenizer
from edgeq.data import read_jsonl
from edgeq.errors import EdgeqError, UsageError
from edgeq.export import tensor_names
from edgeq.io import atomic_path
from edgeq.spec import GGUF_ARCHS, QUANT_TYPES

CHUNK_TOKENS = 512


def compute_imatrix(model_dir: Path, data: str | Path, max_tokens: int = 16384) -> tuple[dict, dict]:
    """{gguf tensor name: float32 (in_features,)} and a summary {tokens, chunks, tensors}."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    names = tensor_names(model.config, GGUF_ARCHS[model.config.model_type])
    ids: list[int] = []
    for msgs in read_jsonl(data):
        if len(ids) >= max_tokens:
            break
        ids += tok.encode(templates.render(tok, msgs), add_special_tokens=False)
    ids = ids[:max_tokens]

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for hf_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            gguf_name = names.get_name(hf_name + ".weight", try_suffixes=(".weight",))
            if gguf_name is None:
                continue
            # A tied head has no output.weight in the GGUF: llama.cpp ignores the entry, mixed.py weighs
            # token_embd's error by it (the head is where that matrix meets activations).

            def hook(module, args, output, key=gguf_name):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()  # (tokens, in_features)
                sums[key] = sums.get(key, 0) + (x * x).sum(0)
                counts[key] = counts.get(key, 0) + x.shape[0]

            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        for i in range(0, len(ids), CHUNK_TOKENS):
            model(torch.tensor([ids[i : i + CHUNK_TOKENS]]))
    for h in hooks:
        h.remove()
    matrix = {k: (sums[k] / counts[k]).float().numpy() for k in sums}
    return matrix, {
        "tokens": len(ids),
        "chunks": -(-len(ids) // CHUNK_TOKENS),
        "tensors": len(matrix),
        "source": str(data),
    }


def refuse_unweighted(quant: str, layout: str) -> None:
    """An importance matrix given for a type whose quantizer rounds every weight alike (Q8_0, int8, the float
    types; `layout` is the QUANT_TYPES row the export writes): refused, since it would change nothing and the
    manifest would say it weighed."""
    row = QUANT_TYPES[layout]
    if not row.uses_imatrix:
        weighing = ", ".join(q.name for q in QUANT_TYPES.values() if q.fmt == row.fmt and q.uses_imatrix)
        raise UsageError(
            f"{quant} rounds every weight alike: an importance matrix changes nothing",
            None,
            f"drop --imatrix-data/--imatrix, or choose a type that weighs by one: {weighing}",
        )


def imatrix_for(model_dir: Path, path: str | None, data: str | None) -> tuple[dict | None, dict | None]:
    """An export's importance matrix: the saved file (the build's plan), else computed on the calibration data,
    else none. The matrix and its summary."""

    if path:
        return load_imatrix(Path(path))
    if data:
        report.err.print(f"computing the importance matrix on {data} …")
        return compute_imatrix(model_dir, data)
    return None, None


def save_imatrix(matrix: dict, summary: dict, path: Path) -> None:
    """safetensors: one float32 (in_features,) tensor per GGUF tensor name, the summary as string metadata."""
    from safetensors.numpy import save_file  # deferred: the workstation toolchain, absent from the runtime-only install

    with atomic_path(path) as tmp:
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in matrix.items()}
        save_file(arrays, str(tmp), metadata={k: str(v) for k, v in summary.items()})


def load_imatrix(path: Path) -> tuple[dict, dict]:
    """What save_imatrix wrote, checked (every entry a 1-D float32 vector of finite, non-negative means), and its
    summary with the file's sha256."""

    # deferred: the workstation toolchain, absent from the runtime-only install
    from safetensors import SafetensorError, safe_open

    def bad(why: str) -> EdgeqError:
        return EdgeqError(f"not a usable importance matrix: {why}", str(path), "delete it; edgeq computes it again")

    try:
        with safe_open(str(path), framework="numpy") as f:
            matrix = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
            summary = dict(f.metadata() or {})
    except (OSError, SafetensorError) as e:
        raise bad(str(e)) from None
    for k, v in matrix.items():
        if v.ndim != 1 or v.dtype != np.float32 or not np.isfinite(v).all() or (v < 0).any():
            raise bad(f"{k}: {v.dtype} {v.shape}, need finite non-negative float32 (in_features,)")
    return matrix, summary | {"file": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}

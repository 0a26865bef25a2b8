"""What an artifact costs on the device, before it is built: its file size and the peak RSS of the process serving it.

storage   GGUF: llama.cpp's own quantizer in dry-run mode (it falls back from K-quants where rows do not pack,
          so nominal bits per weight are wrong); ONNX: the model builder's layout, computed from the shape.
memory    runtime base + resident weights + KV cache + compute buffers. GGUF: the base and how many times each
          weight type is resident come from a calibration (calibration.py) measured on the machine that serves
          the artifact; the KV cache and the runtime's buffers are measured by llama.cpp itself on a stand-in
          of the model's shape (standin.py). ONNX: every runtime term from the calibration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgeq.errors import UsageError
from edgeq.export import onnxquant
from edgeq.ggufcheck import check_gguf
from edgeq.io import read_json
from edgeq.machine import cores
from edgeq.mixed import Tensor, tensor_bytes
from edgeq.records import Prediction, Row
from edgeq.runtime import quantize_plan
from edgeq.spec import (
    BENCH_GEN_TOKENS,
    GGUF_FLOAT_TYPES,
    GGUF_TOKEN_EMBD,
    PLAN_MARGIN,
    QUANT_TYPES,
    TOKENIZER_FILES,
)
from edgeq.standin import RuntimeCost, runtime_cost
from edgeq.validate import Fields

MIB = 2**20


@dataclass(frozen=True)
class Dims:
    """What the footprint depends on, read from config.json (no torch needed)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_positions: int
    tied: bool

    @classmethod
    def from_config(cls, model_dir: Path) -> Dims:
        path = model_dir / "config.json"
        fix = "fix the model's config.json"
        f = Fields(read_json(path, "config.json", fix, 4 << 20), str(path), fix, "config.json")

        def size(key: str, default=None, hi: int = 1 << 24) -> int:
            if default is not None and f.obj.get(key) is None:
                return default
            return f.number(key, lo=1, hi=hi, integer=True)

        heads, hidden = size("num_attention_heads"), size("hidden_size")
        return cls(
            layers=size("num_hidden_layers", hi=1 << 12),
            hidden=hidden,
            heads=heads,
            kv_heads=size("num_key_value_heads", heads),
            head_dim=size("head_dim", max(1, hidden // heads)),
            intermediate=size("intermediate_size"),
            vocab=size("vocab_size", hi=1 << 22),
            max_positions=size("max_position_embeddings", 2048, hi=1 << 24),
            tied=bool(f.obj.get("tie_word_embeddings", False)),
        )


def kv_cache_bytes(d: Dims, n_ctx: int, bytes_per_element: float) -> float:
    """K and V for every layer: 2 × layers × KV heads × head_dim × n_ctx × bytes per element."""
    return 2 * d.layers * d.kv_heads * d.head_dim * n_ctx * bytes_per_element


_TENSOR_LINE = re.compile(r"\]\s+(\S+)\s+-\s+\[([\d,\s]+)\],\s+type =\s*(\w+),(.*)$")


def dry_run_types(float_gguf: Path, quant: str, recipe: dict | None = None) -> dict[str, tuple[str, list[int]]]:
    """{tensor: (ggml type, dims)} that llama.cpp's quantizer would write for `quant` (and a per-tensor recipe):
    its dry run, nothing written. Float types are written by edgeq directly: norms (1-D) stay F32."""

    if quant in GGUF_FLOAT_TYPES:
        return {
            t["name"]: ("F32" if quant == "F32" or len(t["dims"]) == 1 else quant, t["dims"])
            for t in check_gguf(float_gguf)["tensor_info"]
        }
    out = {}
    for line in "".join(quantize_plan(float_gguf, quant, recipe)).splitlines():
        m = _TENSOR_LINE.search(line)
        if not m:
            continue
        chosen = re.search(r"\((\w+)\)\s*$", m.group(4))
        out[m.group(1)] = ((chosen.group(1) if chosen else m.group(3)).upper(), [int(x) for x in m.group(2).split(",")])
    if not out:
        raise UsageError(f"llama.cpp reported no tensors when planning {quant}", str(float_gguf))
    return out


def bytes_by_type(types: dict[str, tuple[str, list[int]]]) -> dict[str, int]:
    """Tensor bytes per ggml type; the token embedding's under its own name (GGUF_TOKEN_EMBD: resident once)."""

    out: dict[str, int] = {}
    for name, (kind, dims) in types.items():
        key = name if name == GGUF_TOKEN_EMBD else kind
        out[key] = out.get(key, 0) + tensor_bytes(Tensor(name, tuple(dims)), kind)
    return out


def gguf_tensor_types(float_gguf: Path, quant: str) -> dict[str, int]:
    """Bytes per ggml type that llama.cpp's quantizer would write for `quant` (dry run: nothing written)."""
    return bytes_by_type(dry_run_types(float_gguf, quant))


def gguf_layout(float_gguf: Path) -> tuple[int, int]:
    """(bytes before the tensor data, tensor count) of a GGUF: the quantized file keeps both."""

    header = check_gguf(float_gguf)
    return header["data_start"], header["tensors"]


def gguf_file_bytes(layout: tuple[int, int], tensor_bytes: dict[str, int]) -> int:
    """Header and metadata as in the float file, then tensor data (each aligned to 32 bytes: 16 on average)."""
    header, n_tensors = layout
    return header + sum(tensor_bytes.values()) + 16 * n_tensors


def _matrix_bytes(rows: int, cols: int, quant: str, bits: int = 4, auto=None, gathered: bool = False) -> int:
    """int4: onnxquant's layout at `bits` (levels, fp32 scales, zero points; auto=min or max: the fewest or most
    bytes --quant auto can choose); int8: the builder's blocks of 32 with fp32 scales; float: dense."""
    precision, block = QUANT_TYPES[quant].onnx_precision, QUANT_TYPES[quant].block_size
    if precision == "int4":
        if auto:
            return onnxquant.auto_bytes(rows, cols, gathered, auto)
        return onnxquant.nbytes(rows, cols, bits, block, gathered)
    if precision == "int8":
        return rows * -(-cols // 32) * (32 + 4)
    return rows * cols * (4 if precision == "fp32" else 2)


def onnx_layer_matmuls(d: Dims) -> list[tuple[int, int]]:
    """(rows, cols) of each layer's quantized matmuls in the builder's graph: fused q/k/v, o, gate, up, down."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    return [
        (q + 2 * kv, d.hidden),
        (d.hidden, q),
        (d.intermediate, d.hidden),
        (d.intermediate, d.hidden),
        (d.hidden, d.intermediate),
    ]


def onnx_bytes(d: Dims, quant: str, auto=None) -> dict[str, int]:
    """The builder's initializers: matmul weights, a gather-only embedding, norms and RoPE caches. int4: onnxquant's
    recipe (default_bits), or with auto=min (max) the smallest (largest) artifact --quant auto can write."""

    def matrix(rows: int, cols: int, bits: int = 4, gathered: bool = False) -> int:
        return _matrix_bytes(rows, cols, quant, bits, auto, gathered)

    per_layer = sum(matrix(rows, cols) for rows, cols in onnx_layer_matmuls(d))
    precision = QUANT_TYPES[quant].onnx_precision
    float_bytes = 2 if precision == "fp16" else 4
    # Tied models gather from lm_head's own weights (int4: GatherBlockQuantized, which takes the zero points
    # again; float: shared); int8 keeps a float embedding, as does any untied model.
    shared = d.tied and precision in ("int4", "fp32", "fp16")
    head_bits = onnxquant.default_bits()[onnxquant.HEAD]
    head = matrix(d.vocab, d.hidden, head_bits)
    gather = 0 if shared else d.vocab * d.hidden * float_bytes
    if shared and precision == "int4":
        gather = matrix(d.vocab, d.hidden, head_bits, gathered=True) - head
    other = (2 * d.layers + 1) * d.hidden * 4 + 2 * d.max_positions * (d.head_dim // 2) * float_bytes
    return {"matmul": d.layers * per_layer + head, "gather": gather, "other": other}


_RUNTIME: dict[tuple, RuntimeCost] = {}  # one stand-in run per float GGUF and setting, shared by every candidate


def gguf_runtime(
    float_gguf: Path, n_ctx: int, prompt: int, threads: int | None = None, gen: int = BENCH_GEN_TOKENS
) -> RuntimeCost:
    """What llama.cpp spends beside the weights when `edgeq bench` serves this model at (n_ctx, prompt): measured on
    stand-ins of the model (standin.py)."""
    st = float_gguf.stat()
    threads = threads or cores()
    key = (str(float_gguf.resolve()), st.st_size, st.st_mtime_ns, n_ctx, prompt, threads, gen)
    if key not in _RUNTIME:
        _RUNTIME[key] = runtime_cost(float_gguf, n_ctx, prompt, gen, threads)
    return _RUNTIME[key]


def predict_gguf_rss(tensor_bytes: dict[str, int], runtime: RuntimeCost, cal: dict) -> dict:
    """runtime base (calibrated on the device) + weights (mmap-ed once; the types llama.cpp repacks there are
    resident twice) + the runtime's own buffers at this shape (a stand-in, measured: gguf_runtime)."""
    g = cal["gguf"]
    weights = sum(b * g["resident_factor"].get(t, 1.0) for t, b in tensor_bytes.items())
    base = g["base_mib"] * MIB
    total = base + weights + runtime.kv_cache + runtime.fixed
    return {"base": base, "weights": weights, "kv_cache": runtime.kv_cache, "compute": runtime.fixed, "total": total}


def tokenizer_bytes(model_dir: Path) -> int:
    """The tokenizer files the builder copies next to the ONNX graph."""
    return sum((model_dir / f).stat().st_size for f in TOKENIZER_FILES if (model_dir / f).is_file())


def predict_onnx_rss(d: Dims, quant: str, n_ctx: int, prompt: int, cal: dict, sizes: dict | None = None) -> dict:
    """`sizes`: onnx_bytes of another layout of quant's graph (--quant auto's), else quant's own."""
    o = cal["onnx"]
    sizes = sizes or onnx_bytes(d, quant)
    base = o["base_mib"] * MIB
    weights = o["resident_factor"][quant] * sizes["matmul"] + sizes["other"]  # see calibrated() for others
    kv = kv_cache_bytes(d, n_ctx, o["kv_bytes_per_element"])
    per_token = o["prompt_bytes_per_token_per_vocab"]  # one number in calibrations before per-precision terms
    per_token = per_token[quant] if isinstance(per_token, dict) else per_token
    compute = prompt * d.vocab * per_token  # prefill returns logits for every token
    steady = base + weights + kv + compute
    load = base + o["load_factor"].get(quant, 0.0) * sizes["matmul"]  # transient while initializers load
    return {"base": base, "weights": weights, "kv_cache": kv, "compute": compute, "total": max(steady, load)}


def onnx_quantized_weights(d: Dims) -> int:
    """Weights in the layers' matmuls and the head: what ONNX's bits per weight divide by."""
    return d.layers * sum(rows * cols for rows, cols in onnx_layer_matmuls(d)) + d.vocab * d.hidden


def apart(value: float, limit: float) -> tuple[str, str]:
    """The two numbers rounded to the fewest significant digits (3 at least) that tell them apart, written plainly
    (`1500`, `9.996`, `4.12e-05`): a breach never reads as `0.000 > 1e-06` or `10.0 < 10`."""

    def shown(x: float, digits: int) -> str:
        r = repr(float(f"{x:.{digits}g}"))
        return r[:-2] if r.endswith(".0") else r

    for digits in range(3, 18):
        a, b = shown(value, digits), shown(limit, digits)
        if a != b:
            break
    return a, b


def rejections(p: Prediction, kld: float, kld_source: str, decode_tok_s: float | None, profile) -> list[str]:
    """Why a candidate does not fit: memory (with the plan's margin), storage, latency, quality."""
    reasons = []
    limit = profile.memory_budget_mib * (1 - PLAN_MARGIN)
    if p.memory_mib > limit:
        reasons.append("memory {} > {} MiB (budget − {:.0%} margin)".format(*apart(p.memory_mib, limit), PLAN_MARGIN))
    if p.storage_mib > profile.storage_budget_mib:
        reasons.append("storage {} > {} MiB".format(*apart(p.storage_mib, profile.storage_budget_mib)))
    if decode_tok_s is not None and decode_tok_s < profile.min_decode_tok_s:
        reasons.append("decode {} < {} tok/s (measured here)".format(*apart(decode_tok_s, profile.min_decode_tok_s)))
    if kld > profile.max_mean_kld:
        reasons.append("KLD {} > {} ({})".format(*apart(kld, profile.max_mean_kld), kld_source))
    return reasons


def footprint_fits(row: Row, profile) -> bool:
    """Predicted to fit memory and storage (what the sweep builds; quality and speed it measures)."""
    p = row.predicted
    return p.memory_mib <= profile.memory_budget_mib * (1 - PLAN_MARGIN) and p.storage_mib <= profile.storage_budget_mib

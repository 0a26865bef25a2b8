"""`edgeq plan`: which artifact (format × quant type) fits a device profile, predicted before building it.

For every candidate the profile allows:
  storage  GGUF: llama.cpp's own quantizer in dry-run mode picks each tensor's type (on 576-wide
           models it falls back from K-quants for most tensors, so nominal bits/weight mislead);
           ONNX: the onnxruntime-genai builder's layout, tensor by tensor, from config.json.
  memory   peak RSS of the serving process at the profile's context =
           runtime base + resident weights + KV cache + compute buffers, where
           KV = 2 × layers × KV heads × head_dim × n_ctx × bytes per element (KV heads, not heads)
           and the runtime terms (base, compute per token, weights resident twice where llama.cpp
           repacks them for the CPU, ORT's prepacked copies) come from measurement: the data in
           calibration of the machine (edgeq calibrate; one per CPU × runtime configuration measured
           ships in edgeq/assets/calibration/). A type the calibration never measured is predicted
           from the measured type with the nearest bits and labelled uncalibrated.
  quality  measured mean KLD when a sweep measured this model, else the prior in spec.py.

The choice: the first format in the profile's order that has a fitting candidate, and in it the
best quality; ties go to the smaller footprint. No candidate fits → BudgetError (exit 3) that
says by how much the smallest misses and what would make it fit.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgeq import report, templates
from edgeq.errors import BudgetError, UsageError
from edgeq.export import onnxquant
from edgeq.io import read_json
from edgeq.records import KLD_MEASURED, KLD_PRIOR, Candidate, Measurement, Plan, Prediction, Row
from edgeq.runtime import ASSETS
from edgeq.spec import (
    CALIBRATIONS_DIR,
    FORMAT_GGUF,
    FORMAT_ONNX,
    GGUF_FLOAT_TYPES,
    LLAMA_CPP_MAX_BATCH,
    ONNX_AUTO_KLD_PRIOR,
    ONNX_AUTO_LAYOUT,
    ONNX_AUTO_PRIOR_SOURCE,
    PLAN_MARGIN,
    QUANT_TYPES,
    TOKENIZER_FILES,
)
from edgeq.validate import Fields

MIB = 2**20
GAIN_TOKENS = 512  # positions of each text a mixed recipe's per-group KLD is measured on
FLOAT_GGUF = "model.F16.gguf"  # what the quantizer plans (and build's sweep quantizes) from


@dataclass
class PlanConfig:
    profile: str = field(metadata={"help": "profile name or YAML path"})
    model: str | None = field(default=None, metadata={"help": "HF model dir; default: embedded SmolLM2-135M"})
    ctx: int | None = field(default=None, metadata={"help": "context to plan for; default: the profile's"})
    calibration: str | None = field(default=None, metadata={"help": "edgeq calibrate file; default: the profile's"})
    allow_pickle: bool = field(default=False, metadata={"help": "accept pickle weights (weights_only=True)"})
    measured_from: str | None = field(default=None, metadata={"help": "an edgeq build --out: its measured KLD"})
    data: str | None = field(
        default=None,
        metadata={"help": "chat JSONL whose activations weigh a mixed recipe's errors; default: unweighted"},
    )


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


# ---------------------------------------------------------------------------------------------
# calibration: the runtime terms, measured on a machine (edgeq calibrate); one shipped per machine measured


def shipped_calibrations() -> list[Path]:
    return sorted((ASSETS / CALIBRATIONS_DIR).glob("*.json"))


CALIBRATION_FIX = "pass a file written by edgeq calibrate, or run it again"
_MIB_TERM = 1 << 20  # MiB: no runtime's base is a tebibyte
_BYTES_TERM = 1 << 20  # bytes per token per hidden unit (or per vocab entry): far above any runtime's
_FACTOR = 64.0  # weights resident this many times over: beyond any runtime


def load_calibration(path: Path) -> dict:
    """A calibration file (written by `edgeq calibrate`): every term plan reads is there, finite, and in range
    (a negative memory term would let a model that fits nothing look small)."""
    f = Fields(read_json(path, "calibration", CALIBRATION_FIX, 1 << 20), str(path), CALIBRATION_FIX, "calibration")
    f.text("measured_on.cpu")
    f.mapping("runtime_config.llama_cpp")
    if not isinstance(f.get("runtime_config.llama_cpp.extra_buffer_types"), bool):
        raise f.bad("runtime_config.llama_cpp.extra_buffer_types", "must be true or false")
    f.number("gguf.base_mib", lo=0, hi=_MIB_TERM)
    for term in ("compute_bytes_per_prompt_token_per_hidden", "compute_bytes_per_batch_token_per_hidden"):
        f.number(f"gguf.{term}", lo=0, hi=_BYTES_TERM)
    f.number("gguf.kv_bytes_per_element", lo=0.5, hi=8)
    for t, v in f.mapping("gguf.resident_factor").items():
        f.number(f"gguf.resident_factor.{t}", v, lo=0, hi=_FACTOR)
    if f.obj.get("onnx") is not None:
        f.number("onnx.base_mib", lo=0, hi=_MIB_TERM)
        f.number("onnx.kv_bytes_per_element", lo=0.5, hi=8)
        per_token = f.get("onnx.prompt_bytes_per_token_per_vocab")
        for q, v in per_token.items() if isinstance(per_token, dict) else [("", per_token)]:
            f.number(f"onnx.prompt_bytes_per_token_per_vocab{'.' + q if q else ''}", v, lo=0, hi=_BYTES_TERM)
        for table in ("resident_factor", "load_factor"):
            for q, v in f.mapping(f"onnx.{table}").items():
                f.number(f"onnx.{table}.{q}", v, lo=0, hi=_FACTOR)
    return f.obj


def machine_calibration(llama: dict | None = None) -> tuple[Path, dict]:
    """The shipped calibration closest to this machine: its llama.cpp configuration first, then its CPU."""
    from edgeq.machine import platform_info

    if llama is None:
        from edgeq.runtime import llama_config

        llama = llama_config()
    cpu = platform_info()["cpu"]
    shipped = {p: load_calibration(p) for p in shipped_calibrations()}
    return max(
        shipped.items(),
        key=lambda pc: (
            pc[1]["runtime_config"]["llama_cpp"]["extra_buffer_types"] == llama["extra_buffer_types"],
            pc[1]["measured_on"]["cpu"] == cpu,
        ),
    )


def select_calibration(named: str | None, profile, llama: dict | None = None) -> tuple[Path, dict, list[str]]:
    """The calibration plan predicts with, and what the user should know about it.

    Named (--calibration, or the profile's `calibration:`, relative to the profile file, or a shipped
    name) → that file. Otherwise the shipped one measured with this machine's llama.cpp configuration,
    on this CPU if there is one. `llama` is this machine's configuration (probe.py) when known."""
    from edgeq.machine import platform_info

    source = named or profile.calibration
    if source:
        path = Path(source)
        if named is None and not path.is_absolute():
            path = Path(profile.source).parent / path
        if not path.is_file() and (ASSETS / CALIBRATIONS_DIR / f"{source}.json").is_file():
            path = ASSETS / CALIBRATIONS_DIR / f"{source}.json"
        if not path.is_file():
            raise UsageError(
                f"calibration {source!r} not found",
                "--calibration" if named else profile.source,
                "pass an edgeq calibrate file, or one of: " + ", ".join(p.stem for p in shipped_calibrations()),
            )
        cal = load_calibration(path)
    cpu = platform_info()["cpu"]
    if llama is None:
        from edgeq.runtime import llama_config

        llama = llama_config()
    if not source:
        path, cal = machine_calibration(llama)
    warnings = []
    on = cal["measured_on"]
    if not source:
        warnings.append(
            f"profile {profile.name} names no calibration of its device: memory is predicted with {path.stem} "
            f"(measured on {on['cpu']}); run `edgeq calibrate` on the device and name the file in the profile"
        )
    cal_bufts = cal.get("runtime_config", {}).get("llama_cpp", {}).get("extra_buffer_types")
    if cal_bufts is not None and cal_bufts != llama["extra_buffer_types"]:
        warnings.append(
            f"{path.stem} was measured with llama.cpp extra buffer types {'on' if cal_bufts else 'off'}; this machine "
            f"runs with them {'on' if llama['extra_buffer_types'] else 'off'}, so bench here will differ from it"
        )
    elif on["cpu"] != cpu and source:
        warnings.append(f"{path.stem} was measured on {on['cpu']}, not on this machine's {cpu}")
    return path, cal, warnings


def calibrated(cal: dict, fmt: str, quant: str) -> tuple[dict, str | None]:
    """The terms for (fmt, quant) and, where this calibration never measured the type, the note that says
    which measured type stands in for it (the one with the nearest nominal bits)."""
    terms, measured = cal.get(fmt), cal.get("measured_types", {}).get(fmt, [])
    if not terms or not measured:  # e.g. calibrated with --no-onnx: borrow a shipped calibration's terms
        other = next(cal for cal in map(load_calibration, shipped_calibrations()) if cal.get(fmt))
        terms, _ = calibrated(other, fmt, quant)
        cpu = other["measured_on"]["cpu"]
        return terms, f"uncalibrated: this calibration has no {fmt} terms; predicted with {cpu}'s"
    if quant in measured:
        return terms, None
    bits = QUANT_TYPES[quant].bits_per_weight
    proxy = min(measured, key=lambda q: abs(QUANT_TYPES[q].bits_per_weight - bits))
    terms = dict(terms)
    for key in ("resident_factor", "load_factor", "prompt_bytes_per_token_per_vocab"):
        if fmt == FORMAT_ONNX and isinstance(terms.get(key), dict) and proxy in terms[key]:
            terms[key] = {**terms[key], quant: terms[key][proxy]}
    return terms, f"uncalibrated: {quant} was not measured here; predicted with {proxy}'s terms"


# ---------------------------------------------------------------------------------------------
# storage: GGUF through llama.cpp's quantizer (dry run), ONNX from the builder's layout

_TENSOR_LINE = re.compile(r"\]\s+(\S+)\s+-\s+\[([\d,\s]+)\],\s+type =\s*(\w+),(.*)$")


def dry_run_types(float_gguf: Path, quant: str, recipe: dict | None = None) -> dict[str, tuple[str, list[int]]]:
    """{tensor: (ggml type, dims)} that llama.cpp's quantizer would write for `quant` (and a per-tensor recipe):
    its dry run, nothing written. Float types are written by edgeq directly: norms (1-D) stay F32."""
    from edgeq.runtime import quantize_plan

    if quant in GGUF_FLOAT_TYPES:
        from edgeq.ggufcheck import check_gguf

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
    """Tensor bytes per ggml type."""
    from edgeq.mixed import Tensor, tensor_bytes

    out: dict[str, int] = {}
    for name, (kind, dims) in types.items():
        out[kind] = out.get(kind, 0) + tensor_bytes(Tensor(name, tuple(dims)), kind)
    return out


def gguf_tensor_types(float_gguf: Path, quant: str) -> dict[str, int]:
    """Bytes per ggml type that llama.cpp's quantizer would write for `quant` (dry run: nothing written)."""
    return bytes_by_type(dry_run_types(float_gguf, quant))


def gguf_layout(float_gguf: Path) -> tuple[int, int]:
    """(bytes before the tensor data, tensor count) of a GGUF: the quantized file keeps both."""
    from edgeq.ggufcheck import check_gguf

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


# ---------------------------------------------------------------------------------------------
# memory: peak RSS of the serving process


def predict_gguf_rss(d: Dims, tensor_bytes: dict[str, int], n_ctx: int, prompt: int, cal: dict) -> dict:
    g = cal["gguf"]  # resident_factor lists ggml tensor types measured resident twice; others are mmap-ed once
    weights = sum(b * g["resident_factor"].get(t, 1.0) for t, b in tensor_bytes.items())
    kv = kv_cache_bytes(d, n_ctx, g["kv_bytes_per_element"])
    compute = d.hidden * (
        g["compute_bytes_per_prompt_token_per_hidden"] * prompt
        + g["compute_bytes_per_batch_token_per_hidden"] * min(LLAMA_CPP_MAX_BATCH, n_ctx)
    )
    base = g["base_mib"] * MIB
    total = base + weights + kv + compute
    return {"base": base, "weights": weights, "kv_cache": kv, "compute": compute, "total": total}


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


# ---------------------------------------------------------------------------------------------
# the plan


def candidates(profile) -> list[Candidate]:
    """The uniform candidates the profile allows, in its format order."""
    return [Candidate(f, q) for f in profile.formats for q in profile.allowed_quant_types if QUANT_TYPES[q].fmt == f]


def predict(
    model_dir: Path,
    profile,
    n_ctx: int,
    float_gguf: Path | None,
    measured: dict[str, Measurement] | None,
    cal: dict,
) -> list[Row]:
    """One row per candidate: predicted storage and memory, quality (measured where known), why it does not fit."""
    d = Dims.from_config(model_dir)
    if n_ctx > d.max_positions:
        raise UsageError(
            f"context {n_ctx} is longer than the model's {d.max_positions} positions",
            str(model_dir),
            f"plan with --ctx {d.max_positions} or less, or a profile with a shorter max_context_tokens",
        )
    measured = measured or {}
    layout = None
    tokenizer = tokenizer_bytes(model_dir)
    rows = []
    for c in candidates(profile):
        terms, note = calibrated(cal, c.fmt, c.quant)
        if c.fmt == FORMAT_GGUF:
            if float_gguf is None:
                raise UsageError("planning GGUF candidates needs the float GGUF of the model")
            types = gguf_tensor_types(float_gguf, c.quant)
            layout = layout or gguf_layout(float_gguf)
            size = gguf_file_bytes(layout, types)
            mem = predict_gguf_rss(d, types, n_ctx, profile.prompt_tokens, {FORMAT_GGUF: terms})
        else:  # the builder copies the tokenizer files next to the graph
            size = sum(onnx_bytes(d, c.quant).values()) + tokenizer
            mem = predict_onnx_rss(d, c.quant, n_ctx, profile.prompt_tokens, {FORMAT_ONNX: terms})
        terms_mib = {k: v / MIB for k, v in mem.items() if k != "total"}
        predicted = Prediction(size / MIB, mem["total"] / MIB, terms_mib, note)
        prior = QUANT_TYPES[c.quant].prior_kld
        row = Row(c, predicted, prior, KLD_PRIOR, tuple(rejections(predicted, prior, KLD_PRIOR, None, profile)))
        rows.append(with_measurement(row, measured[c.key], profile) if c.key in measured else row)
    return rows


# ---------------------------------------------------------------------------------------------
# mixed precision: a per-tensor recipe sized to the budgets (mixed.py)


def fixed_and_quantizable(types: dict[str, tuple[str, list[int]]], float_gguf: Path) -> tuple[dict, list]:
    """The tensors llama.cpp leaves as they are (norms: {name: (type, dims)}) and those a recipe sets."""
    from edgeq.mixed import quantizable

    tensors = quantizable(float_gguf)
    names = {t.name for t in tensors}
    return {n: v for n, v in types.items() if n not in names}, tensors


def plan_mixed(
    model_dir: Path,
    float_gguf: Path,
    quants: list[str],
    n_ctx: int,
    prompt_tokens: int,
    cal: dict,
    max_storage_mib: float,
    max_memory_mib: float,
    imatrix: dict | None,
    work: Path,
    forced: dict | None = None,
    data: str | None = None,
    measured: tuple[dict, dict] | None = None,
) -> tuple[Candidate, Prediction, dict]:
    """The per-tensor mixture of the types `quants` write that fits both budgets (file bytes, predicted peak RSS)
    with the least predicted KLD; BudgetError when none does. `forced` pins tensors to types; `data` is the task text
    the per-group gains are measured on beside the pricing text; `measured` is (mixed.sensitivity,
    mixed.group_gains) already measured on this float GGUF over (at least) the palette."""
    from edgeq import mixed

    d = Dims.from_config(model_dir)
    uniform = {q: dry_run_types(float_gguf, q) for q in quants}
    fixed, tensors = fixed_and_quantizable(next(iter(uniform.values())), float_gguf)
    forced = forced or {}
    by_name = {t.name: t for t in tensors}
    for name, q in sorted(forced.items()):
        if name not in by_name:
            raise UsageError(f"no quantizable tensor named {name!r}", str(float_gguf), "names as in the GGUF")
        if not mixed.fits_rows(by_name[name], q):
            raise UsageError(
                f"{name} has rows of {by_name[name].shape[0]} weights: {q} packs {mixed.ggml_block(q)[0]} per block",
                str(float_gguf),
                "pin it to a type whose block divides the row (Q8_0, Q5_0, Q4_0 pack 32)",
            )
    palette = sorted({uniform[q][t.name][0] for q in quants for t in tensors} | set(forced.values()))
    layout = gguf_layout(float_gguf)
    header = layout[0]
    fixed_rss = predict_gguf_rss(d, bytes_by_type(fixed), n_ctx, prompt_tokens, cal)["total"]
    max_storage = max_storage_mib * MIB - header - mixed.HEADER_SLACK - mixed.layout_bytes(fixed)
    max_memory = max_memory_mib * MIB - fixed_rss
    resident = cal[FORMAT_GGUF]["resident_factor"]

    def options(errs: dict) -> dict:
        return {t.name: mixed.options_for(t, errs.get(t.name, {}), resident, forced.get(t.name)) for t in tensors}

    mixed.check_reachable(options({t.name: dict.fromkeys(palette, 0.0) for t in tensors}), max_storage, max_memory)
    if measured is None:
        with report.progress("sensitivity", len(palette)) as update:
            errors = mixed.sensitivity(float_gguf, palette, imatrix, work, quants[0], update)
            update(len(palette), "")
        n_groups = len(set(mixed.gain_groups(errors).values()))
        with report.progress("pricing", n_groups) as update:
            gains = mixed.group_gains(float_gguf, errors, quants[0], imatrix, kld_probe(model_dir, data), work, update)
            update(n_groups, "")
    else:
        errors, gains = measured
    errors = mixed.priced(errors, gains)
    solution = mixed.solve(options(errors), max_storage, max_memory)
    written = dry_run_types(float_gguf, quants[0], solution.recipe)  # the quantizer's own account of the recipe
    wrong = [n for n, t in solution.recipe.items() if written[n][0] != t]
    if wrong:
        raise UsageError(f"llama.cpp would not write {wrong[0]} as {solution.recipe[wrong[0]]}", str(float_gguf))
    tensor_bytes = bytes_by_type(written)
    size = header + mixed.layout_bytes(written)
    mem = predict_gguf_rss(d, tensor_bytes, n_ctx, prompt_tokens, cal)
    sizes = {q: gguf_file_bytes(layout, bytes_by_type(t)) for q, t in uniform.items()}
    base = min(quants, key=lambda q: abs(sizes[q] - size))  # the uniform type of nearest size names the file type
    info = {
        "palette": palette,
        "kld_predicted": solution.error,
        "uniform_kld_predicted": {  # each uniform type's own tensors, priced the same way
            q: mixed.recipe_error({n: t for n, (t, _) in uniform[q].items()}, errors) for q in quants
        },
        "gains": gains,
        "forced": forced,
        "sensitivity": ("importance-weighted" if imatrix else "squared")
        + " quantization error, priced per class and layer band",
        "types": {t: sum(1 for v in solution.recipe.values() if v == t) for t in palette},
    }
    terms = {k: v / MIB for k, v in mem.items() if k != "total"}
    candidate = Candidate(FORMAT_GGUF, base, tuple(sorted(solution.recipe.items())))
    return candidate, Prediction(size / MIB, mem["total"] / MIB, terms), info


def kld_probe(model_dir: Path, data: str | None):
    """path → the artifact's mean KLD against the HF float model: the mean over GAIN_TOKENS positions of `data`'s
    conversations and GAIN_TOKENS of the pricing text. Both, because the task data alone underprices what the
    task never shows: on the drone fine-tune it priced the tied embedding (every word's row) at 0.44× what the two
    texts do, and the mixtures it chose drifted up to 1.5× further than llama.cpp's on general text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeq.data import read_jsonl
    from edgeq.evaluate import compare_logits, reference_logits
    from edgeq.runtime import pricing_text

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    n = min(GAIN_TOKENS, model.config.max_position_embeddings)
    task: list[int] = []
    for msgs in read_jsonl(data) if data else ():
        if len(task) >= n:
            break
        task += tok.encode(templates.render(tok, msgs), add_special_tokens=False)
    texts = [ids for ids in (task[:n], tok.encode(pricing_text(), add_special_tokens=False)[:n]) if ids]
    refs = [reference_logits(model, ids) for ids in texts]
    del model
    return lambda path: (
        sum(compare_logits(path, r, ids)["mean_kld"] for r, ids in zip(refs, texts, strict=True)) / len(texts)
    )


def mixed_row(model_dir, profile, n_ctx, float_gguf, rows: list[Row], cal, imatrix, data, work: Path) -> Row | None:
    """Where the best uniform GGUF type the profile allows does not fit, a mixture sized to its budgets."""
    gguf = [r for r in rows if r.candidate.fmt == FORMAT_GGUF and not QUANT_TYPES[r.candidate.quant].is_float_gguf]
    if not gguf or footprint_fits(min(gguf, key=lambda r: r.kld), profile):
        return None
    terms, _ = calibrated(cal, FORMAT_GGUF, gguf[0].candidate.quant)
    try:
        candidate, predicted, info = plan_mixed(
            model_dir,
            float_gguf,
            [r.candidate.quant for r in gguf],
            n_ctx,
            profile.prompt_tokens,
            {FORMAT_GGUF: terms},
            profile.storage_budget_mib,
            profile.memory_budget_mib * (1 - PLAN_MARGIN),
            imatrix,
            work,
            data=data,
        )
    except BudgetError:
        return None  # nothing fits: no_fit_error names the smallest uniform candidate
    # On the priors' scale, against what it competes with: the best uniform type that fits (else the nearest size).
    fitting = [r for r in gguf if footprint_fits(r, profile)]
    ref = (
        min(fitting, key=lambda r: r.kld)
        if fitting
        else min(gguf, key=lambda r: abs(r.predicted.storage_mib - predicted.storage_mib))
    )
    ref_predicted = info["uniform_kld_predicted"][ref.candidate.quant]
    kld = ref.kld * (info["kld_predicted"] / ref_predicted if ref_predicted > 0 else 1.0)
    info |= {"reference": ref.candidate.quant}
    reasons = tuple(rejections(predicted, kld, KLD_PRIOR, None, profile))
    return Row(candidate, predicted, kld, KLD_PRIOR, reasons, mixed=info)


def onnx_mixed_row(model_dir: Path, profile, n_ctx: int, rows: list[Row], cal: dict) -> Row | None:
    """Where the best ONNX type the profile allows does not fit, --quant auto's layout (bits and block size per
    weight, onnxquant) sized to the budgets: the largest file under the storage budget whose predicted peak RSS
    stays under the memory budget. Its KLD is a prior read off the measured curve (spec.ONNX_AUTO_KLD_PRIOR);
    the export solves the layout and the sweep measures it."""
    onnx = [
        r
        for r in rows
        if r.candidate.fmt == FORMAT_ONNX and QUANT_TYPES[r.candidate.quant].onnx_precision in ("int4", "int8")
    ]
    if not onnx or footprint_fits(min(onnx, key=lambda r: r.kld), profile):
        return None
    d, quant = Dims.from_config(model_dir), ONNX_AUTO_LAYOUT
    terms, note = calibrated(cal, FORMAT_ONNX, quant)
    tokenizer = tokenizer_bytes(model_dir)
    least, most = onnx_bytes(d, quant, auto=min), onnx_bytes(d, quant, auto=max)
    weights = onnx_quantized_weights(d)

    def at(matmul: float) -> tuple[dict, dict]:
        """The layout's sizes with `matmul` bytes of weights (gather: its share of the extremes) and its RSS."""
        f = (matmul - least["matmul"]) / max(most["matmul"] - least["matmul"], 1)
        sizes = least | {"matmul": matmul, "gather": least["gather"] + f * (most["gather"] - least["gather"])}
        return sizes, predict_onnx_rss(d, quant, n_ctx, profile.prompt_tokens, {FORMAT_ONNX: terms}, sizes)

    def fits(matmul: float) -> bool:
        sizes, mem = at(matmul)
        storage = sum(sizes.values()) + tokenizer
        return (
            storage <= profile.storage_budget_mib * MIB
            and mem["total"] <= profile.memory_budget_mib * (1 - PLAN_MARGIN) * MIB
        )

    lo, hi = float(least["matmul"]), float(most["matmul"])
    if not fits(lo):
        return None
    if fits(hi):  # room for every weight's largest choice: no need to spend more
        lo = hi
    for _ in range(40 if lo < hi else 0):  # bisection to well under a kilobyte
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    sizes, mem = at(lo)
    storage = (sum(sizes.values()) + tokenizer) / MIB
    max_size_mib = math.floor(storage * 100) / 100  # the export's --max-size-mib, as recorded in the candidate
    bpw = 8 * (sizes["matmul"] + sizes["gather"]) / weights
    kld = interpolate_prior(bpw)
    candidate = Candidate(FORMAT_ONNX, quant, (("max_size_mib", f"{max_size_mib:.2f}"),))
    predicted = Prediction(max_size_mib, mem["total"] / MIB, {k: v / MIB for k, v in mem.items() if k != "total"}, note)
    info = {
        "rule": f"--quant auto --max-size-mib {max_size_mib:.2f}: bits (4, 8) and block size per weight",
        "bits_per_weight": bpw,
        "kld_prior": kld,
        "kld_prior_source": ONNX_AUTO_PRIOR_SOURCE,
    }
    reasons = tuple(rejections(predicted, kld, KLD_PRIOR, None, profile))
    return Row(candidate, predicted, kld, KLD_PRIOR, reasons, mixed=info)


def onnx_quantized_weights(d: Dims) -> int:
    """Weights in the layers' matmuls and the head: what ONNX's bits per weight divide by."""
    return d.layers * sum(rows * cols for rows, cols in onnx_layer_matmuls(d)) + d.vocab * d.hidden


def interpolate_prior(bpw: float) -> float:
    """Mean KLD at `bpw` bits per weight on the measured curve, log-linear between its points, flat beyond."""
    pts = sorted(ONNX_AUTO_KLD_PRIOR)
    if bpw <= pts[0][0]:
        return pts[0][1]
    for (b0, k0), (b1, k1) in zip(pts, pts[1:], strict=False):
        if bpw <= b1:
            return math.exp(math.log(k0) + (bpw - b0) / (b1 - b0) * (math.log(k1) - math.log(k0)))
    return pts[-1][1]


def rejections(p: Prediction, kld: float, kld_source: str, decode_tok_s: float | None, profile) -> list[str]:
    """Why a candidate does not fit: memory (with the plan's margin), storage, latency, quality."""
    reasons = []
    limit = profile.memory_budget_mib * (1 - PLAN_MARGIN)
    if p.memory_mib > limit:
        reasons.append(f"memory {p.memory_mib:.0f} > {limit:.0f} MiB (budget − {PLAN_MARGIN:.0%} margin)")
    if p.storage_mib > profile.storage_budget_mib:
        reasons.append(f"storage {p.storage_mib:.0f} > {profile.storage_budget_mib} MiB")
    if decode_tok_s is not None and decode_tok_s < profile.min_decode_tok_s:
        reasons.append(f"decode {decode_tok_s:.1f} < {profile.min_decode_tok_s:g} tok/s (measured here)")
    if kld > profile.max_mean_kld:
        reasons.append(f"KLD {kld:.3f} > {profile.max_mean_kld:g} ({kld_source})")
    return reasons


def with_measurement(row: Row, m: Measurement, profile) -> Row:
    """The row once its candidate was built and measured: measured quality and speed decide whether it fits."""
    reasons = rejections(row.predicted, m.kld, KLD_MEASURED, m.decode_tok_s, profile)
    return dataclasses.replace(row, kld=m.kld, kld_source=KLD_MEASURED, reasons=tuple(reasons), measured=m)


def footprint_fits(row: Row, profile) -> bool:
    """Predicted to fit memory and storage (what the sweep builds; quality and speed it measures)."""
    p = row.predicted
    return p.memory_mib <= profile.memory_budget_mib * (1 - PLAN_MARGIN) and p.storage_mib <= profile.storage_budget_mib


def choose(rows: list[Row], profile) -> Candidate | None:
    """The first format in the profile's order with a fitting candidate; in it the best quality."""
    for fmt in profile.formats:
        fitting = [r for r in rows if r.candidate.fmt == fmt and r.fits]
        if fitting:
            return min(fitting, key=lambda r: (r.kld, r.predicted.memory_mib)).candidate
    return None


class NoFitError(BudgetError):
    """No candidate fits the profile; carries the plan so the caller can still show every row."""

    def __init__(self, what: str, where: str, fix: str, plan: Plan | None = None):
        super().__init__(what, where, fix)
        self.plan = plan


def no_fit_error(rows: list[Row], profile, n_ctx: int, plan: Plan | None = None) -> NoFitError:
    """By how much the smallest candidate misses, and what would make it fit."""
    smallest = min(rows, key=lambda r: r.predicted.memory_mib)
    p = smallest.predicted
    terms = p.memory_terms_mib
    over_mem = p.memory_mib - profile.memory_budget_mib * (1 - PLAN_MARGIN)
    misses = []
    hints = []
    if over_mem > 0:
        misses.append(f"memory by {over_mem:.0f} MiB")
        kv_per_token = terms["kv_cache"] / n_ctx
        fit_ctx = int(n_ctx - over_mem / kv_per_token) if kv_per_token else 0
        if fit_ctx >= 16:
            hints.append(f"a context of {fit_ctx} tokens (now {n_ctx})")
        hints.append(f"a model about {over_mem / max(terms['weights'], 1e-9):.0%} smaller in weights")
    over_storage = p.storage_mib - profile.storage_budget_mib
    if over_storage > 0:
        misses.append(f"storage by {over_storage:.0f} MiB")
    if not misses:
        misses.append("; ".join(smallest.reasons))
        hints.append("a quality or latency budget the candidates can meet, or other quant types")
    return NoFitError(
        f"no candidate fits profile {profile.name}: the smallest ({smallest.candidate.label}, "
        f"{p.memory_mib:.0f} MiB) misses {', '.join(misses)}",
        profile.source,
        "try " + " or ".join(hints),
        plan,
    )


def float_gguf_for(model_dir: Path, work: Path) -> Path:
    """The F16 GGUF the quantizer plans from (written once per model into `work`)."""
    from edgeq.export.gguf import write_float_gguf
    from edgeq.io import atomic_path

    path = work / FLOAT_GGUF
    if not path.is_file():
        with atomic_path(path) as tmp:
            write_float_gguf(model_dir, tmp, "F16")
    return path


def measurements(build_out: str | Path) -> dict[str, Measurement]:
    """What a build's sweep measured, by candidate key."""
    from edgeq.spec import BUILD_STAGE_RECORD, BUILD_STATE_DIR

    path = Path(build_out) / BUILD_STATE_DIR / "sweep" / BUILD_STAGE_RECORD
    fix = "pass the --out of a finished edgeq build"
    if not path.is_file():
        raise UsageError("no finished candidate sweep here", str(path), fix)
    try:
        rows = Plan.from_dict(read_json(path, "the sweep's record", fix)["result"]).rows
    except (KeyError, TypeError, ValueError) as e:  # Measurement.from_dict refuses what is not a finite measurement
        raise UsageError(f"the sweep's record is damaged ({type(e).__name__}: {e})", str(path), fix) from None
    return {r.candidate.key: r.measured for r in rows if r.measured}


def make_plan(cfg: PlanConfig, float_gguf: Path | None = None, imatrix: dict | None = None) -> Plan:
    """Every candidate predicted and the choice (None where nothing fits: the build's sweep decides then). Where
    the best GGUF type allowed does not fit, a mixed recipe sized to the budgets joins the uniform candidates; its
    errors are weighed by `imatrix`, else by one computed on cfg.data."""
    import tempfile

    from edgeq.basemodel import resolve_model
    from edgeq.profiles import load_profile

    profile = load_profile(cfg.profile)
    if cfg.ctx is not None and cfg.ctx < 16:
        raise UsageError(f"--ctx {cfg.ctx} is too small", None, "use at least 16 tokens")
    n_ctx = cfg.ctx or profile.max_context_tokens
    model_dir = resolve_model(cfg.model, cfg.allow_pickle)
    measured = measurements(cfg.measured_from) if cfg.measured_from else None
    cal_path, cal, warnings = select_calibration(cfg.calibration, profile)
    with tempfile.TemporaryDirectory(prefix="edgeq-plan-") as scratch:
        needs_gguf = any(QUANT_TYPES[q].fmt == FORMAT_GGUF for q in profile.allowed_quant_types)
        if needs_gguf and FORMAT_GGUF in profile.formats and float_gguf is None:
            float_gguf = float_gguf_for(model_dir, Path(scratch))
        rows = predict(model_dir, profile, n_ctx, float_gguf, measured, cal)
        mixed: list[Row | None] = []
        if float_gguf is not None and FORMAT_GGUF in profile.formats:
            if imatrix is None and cfg.data:
                from edgeq.export.imatrix import compute_imatrix

                imatrix, _ = compute_imatrix(model_dir, cfg.data)
            mixed.append(mixed_row(model_dir, profile, n_ctx, float_gguf, rows, cal, imatrix, cfg.data, Path(scratch)))
        if FORMAT_ONNX in profile.formats:
            mixed.append(onnx_mixed_row(model_dir, profile, n_ctx, rows, cal))
    for row in filter(None, mixed):  # a mixture the build's sweep measured reads back as measured, like the rest
        m = (measured or {}).get(row.candidate.key)
        rows.append(with_measurement(row, m, profile) if m else row)
    calibration = {
        "name": cal_path.stem,
        "path": str(cal_path),
        "measured_on": cal["measured_on"],
        "runtime_config": cal.get("runtime_config"),
        "warnings": warnings,
    }
    return Plan(
        profile.name,
        str(model_dir),
        n_ctx,
        profile.prompt_tokens,
        profile.memory_budget_mib,
        profile.storage_budget_mib,
        calibration,
        tuple(rows),
        choose(rows, profile),
    )


def plan(cfg: PlanConfig) -> Plan:
    """The plan and its choice; NoFitError (exit 3, carrying the plan) when no candidate fits."""
    from edgeq.profiles import load_profile

    result = make_plan(cfg)
    if result.chosen is None:
        raise no_fit_error(list(result.rows), load_profile(cfg.profile), result.n_ctx, result)
    return result


def render(result: Plan):
    rows = []
    for r in result.rows:
        p = r.predicted
        rows.append(
            [
                ("→ " if r.candidate == result.chosen else "") + r.candidate.label,
                f"{p.memory_mib:.0f}" + (" (uncalibrated)" if p.memory_note else ""),
                f"{p.storage_mib:.1f}",
                f"{r.kld:.4f} ({r.kld_source})",
                "-" if r.decode_tok_s is None else f"{r.decode_tok_s:.0f}",
                "[green]yes[/]" if r.fits else "[red]no[/]",
                "; ".join(r.reasons),
            ]
        )
    caption = (
        f"memory = predicted peak RSS at ctx {result.n_ctx}, prompt {result.prompt_tokens} "
        f"(budget {result.memory_budget_mib} MiB, plan keeps {PLAN_MARGIN:.0%} headroom); "
        f"calibration {result.calibration['name']} (measured on {result.calibration['measured_on']['cpu']})"
    )
    return report.table(
        f"plan for {result.profile}",
        ["candidate", "memory MiB", "size MiB", "mean KLD", "tok/s", "fits", "why not"],
        rows,
        caption,
    )

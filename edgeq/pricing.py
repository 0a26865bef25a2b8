"""A mixed recipe where a budget binds: every tensor's error priced in nats, then the cheapest mixture that fits.

GGUF: the palette of ggml types the allowed uniform types write; the importance-weighted error of every tensor at
every palette type (mixed.py); a price per group (a tensor class in a band of layers) from the KLD measured with
only that group quantized, on the task data and a general text; then mixed.py's knapsack under the file-size and
peak-RSS budgets. ONNX: 4 or 8 bits and a block size per weight under the storage budget (onnxquant.py). Each
becomes a plan row (records.Row) beside the uniform candidates.
"""

from __future__ import annotations

import math
from pathlib import Path

from edgeq import mixed, report, templates
from edgeq.basemodel import load_tokenizer
from edgeq.calibration import calibrated
from edgeq.data import read_jsonl
from edgeq.errors import BudgetError, UsageError
from edgeq.evaluate import compare, reference_logits
from edgeq.footprint import (
    MIB,
    Dims,
    bytes_by_type,
    dry_run_types,
    footprint_fits,
    gguf_file_bytes,
    gguf_layout,
    gguf_runtime,
    onnx_bytes,
    onnx_quantized_weights,
    predict_gguf_rss,
    predict_onnx_rss,
    rejections,
    tokenizer_bytes,
)
from edgeq.mixed import quantizable
from edgeq.records import KLD_PRIOR, Candidate, Prediction, Row
from edgeq.runtime import pricing_text, quantized_logits
from edgeq.spec import (
    FORMAT_GGUF,
    FORMAT_ONNX,
    ONNX_AUTO_KLD_PRIOR,
    ONNX_AUTO_LAYOUT,
    ONNX_AUTO_PRIOR_SOURCE,
    PLAN_MARGIN,
    QUANT_TYPES,
)

GAIN_TOKENS = 512  # positions of each text a mixed recipe's per-group KLD is measured on


def fixed_and_quantizable(types: dict[str, tuple[str, list[int]]], float_gguf: Path) -> tuple[dict, list]:
    """The tensors llama.cpp leaves as they are (norms: {name: (type, dims)}) and those a recipe sets."""

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
    threads: int | None = None,
) -> tuple[Candidate, Prediction, dict]:
    """The per-tensor mixture of the types `quants` write that fits both budgets (file bytes, predicted peak RSS)
    with the least predicted KLD; BudgetError when none does. `forced` pins tensors to types; `data` is the task text
    the per-group gains are measured on beside the pricing text; `measured` is (mixed.sensitivity,
    mixed.group_gains) already measured on this float GGUF over (at least) the palette; `threads` the runtime's
    (default: every core)."""

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
    runtime = gguf_runtime(float_gguf, n_ctx, prompt_tokens, threads)
    fixed_rss = predict_gguf_rss(bytes_by_type(fixed), runtime, cal)["total"]
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
            kld_of = kld_probe(model_dir, data, float_gguf, quants[0], imatrix, work)
            gains = mixed.group_gains(errors, kld_of, update)
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
    mem = predict_gguf_rss(tensor_bytes, runtime, cal)
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


def kld_probe(model_dir: Path, data: str | None, float_gguf: Path, base_quant: str, imatrix: dict | None, work: Path):
    """recipe → mean KLD against the HF float model of `float_gguf` quantized by the recipe ({tensor: type} for every
    quantizable tensor; `base_quant` the file type asked of llama.cpp): the mean over GAIN_TOKENS positions of
    `data`'s conversations and GAIN_TOKENS of the pricing text. Both, because the task data alone underprices what
    the task never shows: on the drone fine-tune it priced the tied embedding (every word's row) at 0.44× what the
    two texts do, and the mixtures it chose drifted up to 1.5× further than llama.cpp's on general text."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
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

    def kld_of(recipe: dict) -> float:
        ours = quantized_logits(float_gguf, work / "gain.gguf", base_quant, imatrix, recipe, texts)
        return sum(compare(r, a, ids).mean_kld for r, a, ids in zip(refs, ours, texts, strict=True)) / len(texts)

    return kld_of


def mixed_row(model_dir, profile, n_ctx, float_gguf, rows: list[Row], cal, imatrix, data, work: Path) -> Row | None:
    """Where the best uniform GGUF type the profile allows does not fit, a mixture sized to its budgets, its errors
    weighed by the matrix `imatrix()` returns (asked for only here: it costs a pass of the float model)."""
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
            imatrix(),
            work,
            data=data,
            threads=profile.threads,
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


def interpolate_prior(bpw: float) -> float:
    """Mean KLD at `bpw` bits per weight on the measured curve, log-linear between its points, flat beyond."""
    pts = sorted(ONNX_AUTO_KLD_PRIOR)
    if bpw <= pts[0][0]:
        return pts[0][1]
    for (b0, k0), (b1, k1) in zip(pts, pts[1:], strict=False):
        if bpw <= b1:
            return math.exp(math.log(k0) + (bpw - b0) / (b1 - b0) * (math.log(k1) - math.log(k0)))
    return pts[-1][1]

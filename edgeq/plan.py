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
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeq.basemodel import MODEL_HELP, resolve_model
from edgeq.calibration import CALIBRATION_HELP, calibrated, select_calibration
from edgeq.config import setting
from edgeq.errors import BudgetError, UsageError
from edgeq.export.imatrix import compute_imatrix
from edgeq.footprint import (
    Dims,
    gguf_file_bytes,
    gguf_layout,
    gguf_runtime,
    gguf_tensor_types,
    onnx_bytes,
    predict_gguf_rss,
    predict_onnx_rss,
    rejections,
    tokenizer_bytes,
)
from edgeq.pricing import mixed_row, onnx_mixed_row
from edgeq.profiles import PROFILE_HELP, load_profile
from edgeq.records import KLD_MEASURED, KLD_PRIOR, Candidate, Measurement, Plan, Prediction, Row
from edgeq.spec import FORMAT_GGUF, FORMAT_ONNX, PLAN_MARGIN, QUANT_TYPES

MIB = 2**20


@dataclass
class PlanConfig:
    profile: str = setting(help=PROFILE_HELP)
    model: str | None = setting(None, MODEL_HELP)
    ctx: int | None = setting(None, "context to plan for [default: the profile's]", minimum=16)
    data: str | None = setting(None, "chat JSONL whose activations weigh a mixed recipe's errors [default: none]")
    calibration: str | None = setting(None, CALIBRATION_HELP)
    allow_pickle: bool = setting(False, "accept pickle weights (loaded with torch weights_only=True)", flag="")


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
            runtime = gguf_runtime(float_gguf, n_ctx, profile.prompt_tokens, profile.threads)
            mem = predict_gguf_rss(types, runtime, {FORMAT_GGUF: terms})
        else:  # the builder copies the tokenizer files next to the graph
            size = sum(onnx_bytes(d, c.quant).values()) + tokenizer
            mem = predict_onnx_rss(d, c.quant, n_ctx, profile.prompt_tokens, {FORMAT_ONNX: terms})
        terms_mib = {k: v / MIB for k, v in mem.items() if k != "total"}
        predicted = Prediction(size / MIB, mem["total"] / MIB, terms_mib, note)
        prior = QUANT_TYPES[c.quant].prior_kld
        row = Row(c, predicted, prior, KLD_PRIOR, tuple(rejections(predicted, prior, KLD_PRIOR, None, profile)))
        rows.append(with_measurement(row, measured[c.key], profile) if c.key in measured else row)
    return rows


def with_measurement(row: Row, m: Measurement, profile) -> Row:
    """The row once its candidate was built and measured: measured quality and speed decide whether it fits."""
    reasons = rejections(row.predicted, m.kld, KLD_MEASURED, m.decode_tok_s, profile)
    return dataclasses.replace(row, kld=m.kld, kld_source=KLD_MEASURED, reasons=tuple(reasons), measured=m)


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


def make_plan(
    cfg: PlanConfig,
    write_float_gguf: Callable[[Path, Path], None] | None = None,
    float_gguf: Path | None = None,
    imatrix: Callable[[], dict | None] | None = None,
    measured: dict[str, Measurement] | None = None,
) -> Plan:
    """Every candidate predicted and the choice (None where nothing fits: the build's sweep decides then).

    GGUF sizes come from llama.cpp's dry run of an F16 GGUF of the model: `float_gguf` where the caller has one, else
    one `write_float_gguf(model_dir, path)` writes into a scratch folder (the caller passes export's writer: plan
    sits below the exports). `measured` (a build's sweep, by candidate key) replaces prior quality. Where the best
    GGUF type allowed does not fit, a mixed recipe sized to the budgets joins the uniform candidates; its errors are
    weighed by the matrix `imatrix()` returns, else by one computed on cfg.data: only then, as nothing else here
    needs one."""
    profile = load_profile(cfg.profile)
    if cfg.ctx is not None and cfg.ctx < 16:
        raise UsageError(f"--ctx {cfg.ctx} is too small", None, "use at least 16 tokens")
    n_ctx = cfg.ctx or profile.max_context_tokens
    model_dir = resolve_model(cfg.model, cfg.allow_pickle)
    cal_path, cal, warnings = select_calibration(cfg.calibration, profile)
    with tempfile.TemporaryDirectory(prefix="edgeq-plan-") as scratch:
        needs_gguf = any(QUANT_TYPES[q].fmt == FORMAT_GGUF for q in profile.allowed_quant_types)
        if needs_gguf and FORMAT_GGUF in profile.formats and float_gguf is None:
            if write_float_gguf is None:
                raise ValueError("make_plan needs float_gguf or write_float_gguf for a GGUF profile")
            float_gguf = Path(scratch) / "model.F16.gguf"
            write_float_gguf(model_dir, float_gguf)
        rows = predict(model_dir, profile, n_ctx, float_gguf, measured, cal)
        mixed: list[Row | None] = []
        if float_gguf is not None and FORMAT_GGUF in profile.formats:
            weights = imatrix or (lambda: compute_imatrix(model_dir, cfg.data)[0] if cfg.data else None)
            mixed.append(mixed_row(model_dir, profile, n_ctx, float_gguf, rows, cal, weights, cfg.data, Path(scratch)))
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


def plan(
    cfg: PlanConfig, write_float_gguf: Callable[[Path, Path], None], measured: dict[str, Measurement] | None = None
) -> Plan:
    """The plan and its choice; NoFitError (exit 3, carrying the plan) when no candidate fits."""
    result = make_plan(cfg, write_float_gguf, measured=measured)
    if result.chosen is None:
        raise no_fit_error(list(result.rows), load_profile(cfg.profile), result.n_ctx, result)
    return result

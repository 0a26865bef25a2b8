"""The candidate sweep: build the candidates a plan says may fit, measure each, choose with the measurements.

Plan predicts footprints and takes quality from priors; the sweep replaces both with what the built artifact
does: mean KLD and top-1 against the merged float model on held-out text, one bench run (decode tok/s, TTFT,
peak RSS) and the file's size. first-fit builds in order of expected quality and stops at the first candidate
that meets every budget; all builds every candidate that may fit and chooses the best measured one. A build's
sweep record is what `edgeq plan --measured-from` reads back (measured_from).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeq import report
from edgeq.basemodel import load_tokenizer
from edgeq.bench import measure_in_child
from edgeq.errors import UsageError
from edgeq.evaluate import TEXT_TOKENS, compare_logits, fidelity_ids, reference_logits
from edgeq.export.gguf import quantize_gguf
from edgeq.export.imatrix import load_imatrix
from edgeq.export.onnx import OnnxExport, export_onnx
from edgeq.footprint import footprint_fits
from edgeq.io import check_free_disk, read_json
from edgeq.plan import choose, with_measurement
from edgeq.profiles import Profile
from edgeq.records import Candidate, Measurement, Plan, Row, StageRecord
from edgeq.runtime import artifact_bytes
from edgeq.spec import BUILD_STAGE_RECORD, BUILD_STATE_DIR, FORMAT_GGUF, QUANT_AUTO


@dataclass(frozen=True)
class SweepInputs:
    """What the sweep builds from: the merged float model, the F16 GGUF the plan stage wrote, the importance
    matrix's file (`imatrix()` computes it the first time a candidate's quantizer weighs by one; the export
    quantizes with the same), the profile, and first-fit or all."""

    merged: Path
    float_gguf: Path
    imatrix: Callable[[], Path]
    profile: Profile
    mode: str


def onnx_export(c: Candidate, merged: Path, imatrix: Path | None, out: Path) -> OnnxExport:
    """The ONNX export of a candidate: its precision, or --quant auto at the size an ONNX mixture names, weighed by
    `imatrix` (the caller passes one only where c.uses_imatrix)."""
    size = float(dict(c.recipe)["max_size_mib"]) if c.recipe else None
    quant = QUANT_AUTO if c.recipe else c.quant
    weighted = str(imatrix) if imatrix else None
    return OnnxExport(out=str(out), model=str(merged), quant=quant, max_size_mib=size, imatrix=weighted)


def measure_candidate(s: SweepInputs, c: Candidate, ref, ids, work: Path) -> Measurement:
    """Build `c` in `work`, measure it against the merged model's logits `ref` on `ids` and in one bench run,
    delete it."""
    path = work / (f"{c.key.split(':', 1)[1]}.gguf" if c.fmt == FORMAT_GGUF else c.quant)
    imatrix = s.imatrix() if c.uses_imatrix else None
    if c.fmt == FORMAT_GGUF:
        matrix = load_imatrix(imatrix)[0] if imatrix else None
        quantize_gguf(s.float_gguf, path, c.quant, matrix, dict(c.recipe) or None)
    else:
        export_onnx(onnx_export(c, s.merged, imatrix, path))
    fidelity = compare_logits(path, ref, ids)
    p = s.profile
    run = measure_in_child(c.fmt, path, p.prompt_tokens, 32, p.threads, p.max_context_tokens)
    size = artifact_bytes(path)
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    return Measurement(
        kld=fidelity.mean_kld,
        top1=fidelity.top1_agreement,
        decode_tok_s=run["decode_tok_s"],
        ttft_ms=run["ttft_ms"],
        peak_rss_mib=run["peak_rss_mib"],
        storage_mib=size / 2**20,
    )


def order(rows: list[Row], profile: Profile) -> list[Row]:
    """The candidates worth building, in order of expected quality: predicted to fit memory and storage, the
    profile's formats in order, each by prior KLD (then the smaller footprint)."""
    rank = {f: i for i, f in enumerate(profile.formats)}
    todo = [r for r in rows if footprint_fits(r, profile)]
    return sorted(todo, key=lambda r: (rank[r.candidate.fmt], r.kld, r.predicted.memory_mib))


def sweep(planned: Plan, s: SweepInputs, work: Path) -> Plan:
    """Build and measure candidates; choose with the measurements. first-fit stops at the first candidate (in
    order()) whose measured quality and speed meet the profile: the one of best expected quality that fits.
    all builds every candidate that may fit and chooses the best measured one."""
    import torch  # deferred: torch and transformers take seconds to import and only the workstation has them
    from transformers import AutoModelForCausalLM

    todo = order(list(planned.rows), s.profile)
    check_free_disk(work, 2 * max([r.predicted.storage_mib for r in todo] or [0]) * 2**20, "the candidate sweep")
    tok = load_tokenizer(s.merged)
    model = AutoModelForCausalLM.from_pretrained(s.merged, dtype=torch.float32).eval()
    ids = fidelity_ids(tok, TEXT_TOKENS, model.config.max_position_embeddings)
    ref = reference_logits(model, ids)
    del model
    built: dict[Candidate, Row] = {}
    with report.progress("sweep", len(todo)) as update:
        for i, r in enumerate(todo):
            update(i, r.candidate.label)
            m = measure_candidate(s, r.candidate, ref, ids, work)
            built[r.candidate] = with_measurement(r, m, s.profile)
            if s.mode == "first-fit" and built[r.candidate].fits:
                break
        update(len(todo), "")
        won = next((c for c, r in built.items() if r.fits), None)
        if won is not None and won.recipe:  # the report compares the mixture with the best uniform type that fits
            uniform = next((r for r in todo if not r.candidate.recipe and r.candidate not in built), None)
            if uniform is not None:
                m = measure_candidate(s, uniform.candidate, ref, ids, work)
                built[uniform.candidate] = with_measurement(uniform, m, s.profile)
    rows = [built.get(r.candidate, r) for r in planned.rows]
    measured = [r for r in rows if r.measured]
    if s.mode == "first-fit":
        chosen = next((r.candidate for r in built.values() if r.fits), None)
    else:
        chosen = choose(measured, s.profile)
    return dataclasses.replace(planned, rows=tuple(rows), chosen=chosen)


def measured_from(build_out: str | Path) -> dict[str, Measurement]:
    """What a build's sweep measured, by candidate key (`edgeq plan --measured-from OUT`)."""
    path = Path(build_out) / BUILD_STATE_DIR / "sweep" / BUILD_STAGE_RECORD
    fix = "pass the --out of a finished edgeq build"
    if not path.is_file():
        raise UsageError("no finished candidate sweep here", str(path), fix)
    try:
        rows = Plan.from_dict(StageRecord.from_dict(read_json(path, "the sweep's record", fix)).result).rows
    except (KeyError, TypeError, ValueError) as e:  # Measurement.from_dict refuses what is not a finite measurement
        raise UsageError(f"the sweep's record is damaged ({type(e).__name__}: {e})", str(path), fix) from None
    return {r.candidate.key: r.measured for r in rows if r.measured}

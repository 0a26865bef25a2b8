"""A plan as a table: every candidate, its predicted footprint, its quality (measured or prior) and why it misses."""

from __future__ import annotations

from edgeq import report
from edgeq.records import Plan
from edgeq.spec import PLAN_MARGIN


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

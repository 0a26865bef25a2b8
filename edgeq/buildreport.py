"""What `edgeq build` shows and leaves behind: the live stage view, the summary, and the output
directory's artifact, Ollama Modelfile, manifest.json, report.md and candidates.png."""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from edgeq import __version__, report, templates
from edgeq.basemodel import load_tokenizer
from edgeq.errors import UsageError
from edgeq.footprint import footprint_fits
from edgeq.io import atomic_dir, atomic_file, atomic_path, write_json, write_text
from edgeq.machine import versions
from edgeq.planreport import render
from edgeq.records import BuildResult, Candidate, ExportResult, Plan
from edgeq.serving import default_system, embed
from edgeq.spec import (
    BUILD_MANIFEST,
    BUILD_MODELFILE,
    BUILD_PLOT,
    BUILD_REPORT,
    FORMAT_GGUF,
    FORMAT_ONNX,
    MANIFEST_SCHEMA,
    PLAN_MARGIN,
    SERVED_GAP_POINTS,
)
from edgeq.trainplan import CUDA_CONTEXT_MIB, TRAINPLAN_ERRORS, TRAINPLAN_SOURCE

# ---------------------------------------------------------------------------------------------
# the live view: one line per stage (done, cached, running with its own bar, pending)


class StageView:
    def __init__(self, stages):
        self.rows = {s: {"state": "pending", "seconds": None, "bar": None, "t0": None} for s in stages}
        self._live = None

    def set(self, stage: str, state: str, seconds: float | None = None) -> None:
        row = self.rows[stage]
        row.update(state=state, seconds=seconds)
        row["t0"] = time.time() if state == "running" else row["t0"]
        if state != "running":
            row["bar"] = None
        self._refresh()

    def _progress(self, description, completed, total, info) -> None:
        running = [r for r in self.rows.values() if r["state"] == "running"]
        if running:
            running[0]["bar"] = (completed, total, info)
            self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render())

    def render(self):
        from rich.table import Table

        marks = {"done": "[green]✓ done[/]", "cached": "[cyan]✓ cached[/]", "running": "[yellow]▶ running[/]"}
        marks |= {"failed": "[red]✗ failed[/]", "pending": "[dim]· pending[/]"}
        t = Table(title="edgeq build", title_justify="left")
        for c in ("stage", "state", "time", "progress"):
            t.add_column(c)
        for stage, r in self.rows.items():
            secs = r["seconds"] if r["state"] != "running" else time.time() - r["t0"]
            bar = ""
            if r["bar"]:
                done, total, info = r["bar"]
                n = int(20 * done / total) if total else 0
                bar = f"{'█' * n}{'░' * (20 - n)} {done}/{total} {info}"
            t.add_row(stage, marks[r["state"]], "" if secs is None else f"{secs:.1f} s", bar)
        return t

    @contextlib.contextmanager
    def live(self):
        from rich.live import Live

        with Live(self.render(), console=report.err, refresh_per_second=4, transient=True) as live:
            self._live = live
            try:
                with report.progress_to(self._progress):
                    yield self
            finally:
                self._live = None


def dry_run_view(planned, ft, stages: dict, out: Path):
    """The fine-tune's cost (trainplan.py), the plan (predicted from the base model: same shapes, prior quality)
    and the stages that would run."""
    from rich.console import Group

    rows = [[s, state] for s, state in stages.items()]
    return Group(
        finetune_table(ft),
        render(planned),
        report.table(f"stages into {out} (dry run: nothing written)", ["stage", "state"], rows),
    )


def finetune_table(p):
    """The fine-tune's predicted peak memory on a CPU, each term, and how far the prediction is known to hold. Its
    seconds per step are not shown: off by up to 77 % on shapes outside the fit (benchmarks/RESULTS.md)."""
    rows = [
        ["method", p.method],
        ["peak RSS", f"{p.peak_mib:.0f} MiB"],
        ["  loading the base", f"{p.load_mib:.0f} MiB"],
    ]
    rows += [["  training", f"{p.train_mib:.0f} MiB"]] + [[f"    {k}", f"{v:.0f} MiB"] for k, v in p.terms_mib.items()]
    rows += [["gradient checkpointing", "on" if p.checkpointing else "off"]]
    if p.batch_size:
        rows += [["micro-batch × accumulation", f"{p.batch_size} × {p.grad_accum}"]]
    if p.chosen:
        rows += [["to fit the memory limit", p.chosen]]
    rows += [["calibrated on", TRAINPLAN_SOURCE], ["error out of sample", TRAINPLAN_ERRORS]]
    cpu = report.table("fine-tune on a CPU (predicted)", ["", ""], rows)
    if not p.gpu:
        return cpu
    from rich.console import Group

    return Group(cpu, gpu_table(p.gpu))


def gpu_table(predictions):
    """The same micro-batch on a CUDA GPU (trainplan.predict_gpu), MiB, a column per method, each cell checkpointing
    on / off. Not measured: no GPU was lent here."""
    names = {"qlora": "QLoRA", "lora-16bit": "LoRA bf16", "full": "full fp32"}
    by = {m: [g for g in predictions if g.method == m] for m in dict.fromkeys(g.method for g in predictions)}
    pair = {m: sorted(gs, key=lambda g: not g.checkpointing) for m, gs in by.items()}  # on, then off

    def cells(value) -> list[str]:
        return [" / ".join(f"{value(g):.0f}" for g in gs) for gs in pair.values()]

    rows = [[term] + cells(lambda g, t=term: g.terms_mib[t]) for term in predictions[0].terms_mib]
    rows += [["allocated (torch peak)"] + cells(lambda g: g.allocated_mib)]
    rows += [[f"+ CUDA context {CUDA_CONTEXT_MIB}"] + cells(lambda g: g.device_mib)]
    title = "fine-tune on a CUDA GPU, checkpointing on / off (predicted from the architecture; never measured on a GPU)"
    return report.table(title, ["MiB"] + [names[m] for m in pair], rows)


# ---------------------------------------------------------------------------------------------
# the output directory


_CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


def _chatml(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def modelfile(gguf_name: str, tok, profile, system=None) -> tuple[str, bool]:
    """An Ollama Modelfile that serves the artifact as edgeq scored it, each line with its reason: chat
    template, default system prompt, stop tokens, the profile's context and threads, greedy sampling. The
    template is written only where the model's own Jinja template is ChatML, checked by rendering a
    conversation both ways; otherwise Ollama reads tokenizer.chat_template from the GGUF, which carries the
    default system prompt itself. `system` (serving.SystemPrompt) says where that prompt came from.
    Returns (text, template_written)."""

    convo = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    try:
        chatml = templates.render(tok, convo, True) == _chatml(convo)
        default = default_system(tok.chat_template, tok)
    except Exception:  # noqa: BLE001 - templates are arbitrary Jinja; any failure means "not ChatML"
        chatml, default = False, None
    lines = [
        f"# Ollama Modelfile written by edgeq {__version__} for profile {profile.name}: the artifact as it was scored.",
        f"FROM ./{gguf_name}",
    ]
    if chatml:
        lines.append("# The model's template is ChatML (checked by rendering a conversation both ways).")
        lines.append(f'TEMPLATE """{_CHATML_TEMPLATE}"""')
        if default:  # Ollama's TEMPLATE replaces the GGUF's, so the default system prompt travels as SYSTEM
            why = f"{system.source}: {system.why}" if system and system.text else "the base template's default"
            lines += [f"# The default system prompt ({why}).", f'SYSTEM """{_block(default, "the system prompt")}"""']
    ends = tok.convert_ids_to_tokens(templates.turn_ends(tok))
    stops = sorted({t for t in (tok.eos_token, *ends, "<|im_end|>" if chatml else None) if t})
    lines.append("# Generation ends at eos and at the token the template ends a turn with, as in the evaluation.")
    lines += [f'PARAMETER stop "{_quoted(s, "a stop token")}"' for s in stops]
    lines += [
        "# The profile's context window and CPU threads.",
        f"PARAMETER num_ctx {profile.max_context_tokens}",
        f"PARAMETER num_thread {profile.threads}",
        "# Greedy decoding: edgeq measured the task score with it.",
        "PARAMETER temperature 0",
    ]
    return "\n".join(lines) + "\n", chatml


def _block(text: str, what: str) -> str:
    """A value for a triple-quoted Modelfile string: Ollama's parser ends it at the first \"\"\" (no escapes)."""
    if '"""' in text or text.endswith('"'):
        raise UsageError(
            f'{what} contains """ and would end the Modelfile string early (the rest would become instructions)',
            "the model's chat template",
            "edit the template, or write the Modelfile yourself",
        )
    return text


def _quoted(text: str, what: str) -> str:
    """A value for a one-line quoted Modelfile string: no quote, backslash or line break."""
    if any(c in text for c in '"\\\n\r'):
        raise UsageError(
            f"{what} {text!r} holds a quote, backslash or line break that a Modelfile line cannot carry",
            "the model's tokenizer",
            "use a model whose special tokens are plain text",
        )
    return text


def check_modelfile(model_dir: Path, profile, system) -> None:
    """Fail before any work where the template (with the deployment system prompt) or the tokens cannot be
    written into a Modelfile."""

    tok = load_tokenizer(model_dir)
    if system.text:
        tok.chat_template = embed(tok.chat_template, system.text, tok)
    modelfile("model.gguf", tok, profile, system)


def plot(rows, chosen, profile, path: Path) -> dict:
    """Size vs KLD over every candidate of the plan (records.Row): measured ones filled, coloured by decode tok/s;
    the ones only predicted hollow, at their predicted size and prior KLD; the chosen one ringed; the profile's
    storage and quality budgets as lines. A first-fit build measures one candidate, and the picture still shows
    the whole plan and where the choice sits in it. Returns how many points of each kind it drew."""
    import matplotlib  # deferred: the workstation toolchain, absent from the runtime-only install

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def point(r):
        if r.measured:
            return r.measured.storage_mib, max(r.measured.kld, 1e-5)
        return r.predicted.storage_mib, max(r.kld, 1e-5)

    measured, predicted = [r for r in rows if r.measured], [r for r in rows if not r.measured]
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    if predicted:
        xs, ys = zip(*map(point, predicted), strict=True)
        ax.scatter(xs, ys, s=50, facecolors="none", edgecolors="grey", linewidths=1, label="predicted only (prior KLD)")
    if measured:
        xs, ys = zip(*map(point, measured), strict=True)
        cs = [r.measured.decode_tok_s for r in measured]
        sc = ax.scatter(xs, ys, c=cs, cmap="viridis", s=60, edgecolors="k", linewidths=0.5, label="measured")
        fig.colorbar(sc, ax=ax, label="decode tok/s (measured here)")
    for r in rows:
        x, y = point(r)
        ax.annotate(r.candidate.label, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        if r.candidate == chosen:
            ax.scatter([x], [y], s=260, facecolors="none", edgecolors="red", linewidths=2, label="chosen")
    ax.axvline(profile.storage_budget_mib, color="tab:orange", ls="--", lw=1, label="storage budget")
    ax.axhline(profile.max_mean_kld, color="tab:purple", ls=":", lw=1, label="quality budget (mean KLD)")
    ax.set_yscale("log")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=7, frameon=False)
    ax.set_xlabel("artifact size (MiB)")
    ax.set_ylabel("mean KLD vs merged float model (log)")
    ax.set_title(f"plan for {profile.name}: size vs fidelity vs speed")
    fig.tight_layout()

    with atomic_file(path) as f:
        fig.savefig(f, format="png", bbox_inches="tight")  # the legend sits below the axes
    plt.close(fig)
    return {"measured": len(measured), "predicted": len(predicted)}


def publish_artifact(src: Path, dst: Path) -> None:
    """A copy, atomically replacing an older artifact. Not a hard link: editing the published file must not
    change the cached one (the manifest's sha256 describes the cache)."""

    if src.is_file():
        with atomic_path(dst, force=True) as tmp:
            shutil.copyfile(src, tmp)
    else:
        with atomic_dir(dst, force=True, protect=[]) as tmp:
            for f in src.rglob("*"):
                if f.is_file():
                    (tmp / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, tmp / f.relative_to(src))


def write_outputs(b: BuildResult) -> list[str]:
    """Publish the artifact and write manifest, report, Modelfile and plot; the build's checks (bench's and the
    quality checks) are the verdict the report shows. Returns the names written into OUT."""

    out, chosen = Path(b.out), b.candidate
    publish_artifact(Path(b.export.path), out / b.export.name)
    template_ok = None
    if chosen.fmt == FORMAT_GGUF:
        tok = load_tokenizer(b.merge.path)
        text, template_ok = modelfile(b.export.name, tok, b.profile, b.system)
        write_text(out / BUILD_MODELFILE, text)
    plot(b.plan.rows, chosen, b.profile, out / BUILD_PLOT)
    m = manifest(b, template_ok)
    write_json(out / BUILD_MANIFEST, m)
    write_text(out / BUILD_REPORT, markdown(b, m))
    published = [b.export.name, BUILD_MANIFEST, BUILD_REPORT, BUILD_PLOT]
    return published + ([BUILD_MODELFILE] if template_ok is not None else [])


def manifest(b: BuildResult, template_ok: bool | None) -> dict:
    """manifest.json (spec.MANIFEST_SCHEMA): inputs, stage keys, every stage's numbers and the versions."""
    export, ev, bench, chosen = b.export, b.eval, b.bench, b.candidate
    predicted = b.plan.row(chosen).predicted
    measured_rss = bench.median("peak_rss_mib")
    return {
        "schema": MANIFEST_SCHEMA,
        "edgeq_version": __version__,
        "profile": b.profile.as_dict(),
        "inputs": b.inputs.as_dict(),
        "stages": {s: {"key": k} for s, k in b.keys.items()},
        "finetune": b.finetune.summary(),
        "merge": {k: v for k, v in b.merge.as_dict().items() if k != "path"},
        "quant_recipe": chosen.as_dict()
        | {"imatrix_source": export.imatrix_source, "gates": export.gates}
        | mixed_record(b.plan, chosen, export)
        | ({"onnx": export.quant_recipe} if export.quant_recipe else {}),
        "artifact": {
            "path": export.name,
            "sha256": bench.artifact_sha256,  # bench hashed these same bytes
            "bytes": export.bytes,
        },
        "footprint": {
            "predicted_peak_rss_mib": predicted.memory_mib,
            "measured_peak_rss_mib": measured_rss,
            "prediction_error": predicted.memory_mib / measured_rss - 1,
            "predicted_storage_mib": predicted.storage_mib,
            "measured_storage_mib": bench.artifact_mib,
        },
        "fidelity": {
            "artifact": export.path,
            "format": chosen.fmt,
            "reference": b.merge.path,
            "text": asdict(ev.text),
            "task_text": asdict(ev.task_text),
            "answer_nll": ev.artifact.answer_nll and asdict(ev.artifact.answer_nll),
            "task": ev.artifact.as_dict(answers=False),
            "task_served": ev.served.as_dict(answers=False),
        },
        "task": {
            "base": ev.base.score,
            "merged": ev.merged.score,
            "metric": ev.merged.metric,
            "metric_why": ev.merged.why,
            "answer_nll": {k: asdict(getattr(ev, k).answer_nll) for k in ("base", "merged", "artifact")},
            "agreement_with_merged": asdict(ev.agreement),
        },
        "system_prompt": b.system.as_dict(),
        "bench": {k: bench.as_dict()[k] for k in ("settings", "results", "checks")},
        "quality_checks": [c.as_dict() for c in b.quality],
        "ollama_template": template_ok,
        "runtime_config": bench.environment.get("runtime_config", {}),
        "versions": versions(
            ("torch", "transformers", "peft", "bitsandbytes", "llama_cpp", "gguf", "onnxruntime", "onnxruntime_genai")
        ),
    }


def mixed_record(sweep: Plan, chosen: Candidate, export: ExportResult) -> dict:
    """A mixed recipe's account for the manifest: the solver's (palette, predicted error, reference type), the
    sensitivity's source and sha256, and the best uniform type that fits as measured beside it."""
    if not chosen.recipe:
        return {}
    row, imatrix = sweep.row(chosen), export.importance
    uniform = [r for r in sweep.rows if r.measured and r.fits and not r.candidate.recipe]
    best = min(uniform, key=lambda r: r.kld, default=None)
    return {
        "mixed": row.mixed
        | {
            "kld": row.kld,  # measured by the sweep, as the uniform candidates were
            "sensitivity_source": imatrix.get("source"),
            "sensitivity_sha256": imatrix.get("sha256"),
            "best_uniform_that_fits": best
            and {"candidate": best.candidate.as_dict(), "kld": best.kld, "storage_mib": best.predicted.storage_mib},
        }
    }


def markdown(b: BuildResult, m: dict) -> str:
    """report.md: the result, then a section each for the task score, footprint and speed, candidates and recipe."""
    chosen, breaches = b.candidate, b.breaches
    lines = [
        f"# edgeq build — profile `{b.profile.name}`",
        "",
        f"Artifact: `{m['artifact']['path']}` ({chosen.label}), "
        f"built {time.strftime('%Y-%m-%d %H:%M')} by edgeq {__version__}.",
        "",
        "**Result: " + ("all budgets met**" if not breaches else "budget breached** — " + "; ".join(breaches)),
        "",
    ]
    lines += _task_section(b, m) + _footprint_section(b, m) + _candidates_section(b) + _recipe_section(m, chosen)
    return "\n".join(lines)


_TRAINED = {"qlora": "QLoRA, merged", "lora": "LoRA on a 16-bit base, merged", "full": "every weight"}


def _task_section(b: BuildResult, m: dict) -> list[str]:
    ev, sp = b.eval, b.system
    art, served = ev.artifact.score, ev.served.score
    nll, agree = {k: getattr(ev, k).answer_nll for k in ("base", "merged", "artifact")}, ev.agreement
    shown = repr(sp.text) if sp.text else "the base template's own"
    lines = [
        "## Task score on the held-out data",
        "",
        f"Metric: **{ev.merged.metric}** — {ev.merged.why}. Scores are 0–100; the profile's "
        "max_task_accuracy_drop_points is in points of this metric.",
        "",
        f"| model | {ev.merged.metric} | answer NLL (nats/token) |",
        "|---|---|---|",
        f"| base model | {ev.base.score:.1f} | {nll['base'].mean_nll:.3f} |",
        f"| fine-tuned ({_TRAINED[b.finetune.method]}, float32) | {ev.merged.score:.1f} | "
        f"{nll['merged'].mean_nll:.3f} |",
        f"| artifact, prompts as in training | {art:.1f} | {nll['artifact'].mean_nll:.3f} |",
        f"| **artifact as served** (only the user's turn, its embedded template) | **{served:.1f}** | |",
        "",
        f"Answer NLL: teacher-forced, over {nll['merged'].tokens} reference-answer tokens; the fine-tune "
        f"lowered it by {nll['base'].mean_nll - nll['merged'].mean_nll:.3f} nats/token. Generation "
        f"agreement with the merged float model: {agree.identical_pct:.1f} % identical answers, "
        f"{agree.prefix_agreement_pct:.1f} % of tokens before the first difference.",
        "",
        f"The fine-tune gained **{ev.merged.score - ev.base.score:+.1f} points**; the artifact as served keeps "
        f"{served - ev.base.score:+.1f} over the base. The quality gate judges the artifact as served.",
        "",
        f"Default system prompt in the artifact: {shown} ({sp.source}: {sp.why}).",
        "",
        f"The served template rendered {ev.artifact.details.get('same_prompt_as_served', 0)} of "
        f"{len(ev.artifact.answers)} prompts to the same tokens as training did; those answers were generated "
        "once (same runtime, same greedy decode).",
        "",
    ]
    if abs(art - served) > SERVED_GAP_POINTS:
        lines += [
            f"**Warning:** served and evaluated scores differ by {abs(art - served):.1f} points (more than "
            f"{SERVED_GAP_POINTS:g}): the artifact served the usual way is not the model that was scored. "
            "Check the default system prompt (`--system-prompt`) and the chat template.",
            "",
        ]
    return lines


def _footprint_section(b: BuildResult, m: dict) -> list[str]:
    fp, p, bench, ev = m["footprint"], b.profile, b.bench, b.eval
    return [
        "## Footprint and speed (edgeq bench, this machine)",
        "",
        "| | predicted | measured | budget |",
        "|---|---|---|---|",
        f"| peak RSS MiB (ctx {p.max_context_tokens}) | {fp['predicted_peak_rss_mib']:.1f} | "
        f"{fp['measured_peak_rss_mib']:.1f} ({100 * fp['prediction_error']:+.1f} %) | {p.memory_budget_mib} |",
        f"| size MiB | {fp['predicted_storage_mib']:.1f} | {fp['measured_storage_mib']:.1f} | {p.storage_budget_mib} |",
        f"| TTFT ms ({p.prompt_tokens} tokens) | | {bench.median('ttft_ms'):.0f} | {p.ttft_ms:g} |",
        f"| decode tok/s | | {bench.median('decode_tok_s'):.1f} | ≥ {p.min_decode_tok_s:g} |",
        f"| mean KLD vs merged | | {ev.text.mean_kld:.4f} | ≤ {p.max_mean_kld:g} |",
        "",
    ]


def _candidates_section(b: BuildResult) -> list[str]:

    p, sweep = b.profile, b.plan
    lines = [
        "## Candidates",
        "",
        f"Plan at ctx {p.max_context_tokens}, prompt {p.prompt_tokens}, with {PLAN_MARGIN:.0%} memory headroom. "
        f"Measured: built, KLD on held-out text, one bench run (sweep: {b.sweep_mode}). ![candidates]({BUILD_PLOT})",
        "",
        "| candidate | predicted RSS MiB | measured RSS MiB | size MiB | KLD | decode tok/s | fits | why not |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sweep.rows:
        fits, why = ("yes" if r.fits else "no"), "; ".join(r.reasons)
        if r.measured is None and footprint_fits(r, p):  # first-fit stopped before it
            fits, why = "not built", f"{sweep.chosen.label} came first in expected quality and met every budget"
        lines.append(
            f"| {'**→** ' if r.candidate == sweep.chosen else ''}{r.candidate.label} | {r.predicted.memory_mib:.1f} | "
            f"{f'{r.measured.peak_rss_mib:.1f}' if r.measured else '-'} | {r.predicted.storage_mib:.1f} | "
            f"{r.kld:.4f} ({r.kld_source}) | {'-' if r.decode_tok_s is None else round(r.decode_tok_s)} | "
            f"{fits} | {why} |"
        )
    return lines + [""]


def _mixed_lines(m: dict) -> list[str]:
    """What the mixture is, how it was chosen, and what it gains over the best uniform type that fits."""
    mx = m["quant_recipe"]["mixed"]
    counts = ", ".join(f"{n} × {t}" for t, n in sorted(mx["types"].items(), key=lambda kv: -kv[1]) if n)
    lines = [
        f"- quantization: a per-tensor mixture ({counts}; file type {m['quant_recipe']['quant']}), chosen to fit "
        f"the storage and memory budgets with the least predicted KLD ({mx['sensitivity']}: "
        f"{mx['kld_predicted']:.4f}; uniform {mx['reference']}: {mx['uniform_kld_predicted'][mx['reference']]:.4f} "
        "predicted the same way); importance matrix from "
        f"{mx['sensitivity_source'] or 'none'} (sha256 {str(mx['sensitivity_sha256'])[:12]}…); every tensor's type "
        "is read back from the file (`quant_recipe.recipe` in manifest.json)",
    ]
    return lines + [_why_mixed(mx)]


def _why_mixed(mx: dict) -> str:
    """A mixture (GGUF or ONNX) against the best uniform type that fits, both measured by the sweep."""
    best, kld = mx["best_uniform_that_fits"], mx["kld"]
    if not best:
        return "- why mixed: no uniform type the profile allows fits its budgets"
    gain = 1 - kld / best["kld"] if best["kld"] > 0 else 0.0
    return (
        f"- why mixed: mean KLD {kld:.4f} against {best['kld']:.4f} for {best['candidate']['quant']}, the best "
        f"uniform type that fits ({best['storage_mib']:.1f} MiB): {gain:.0%} lower"
    )


def _onnx_mixed_lines(m: dict) -> list[str]:
    """The ONNX mixture: the size it was solved for, the layout the export wrote, and what it gains."""
    qr = m["quant_recipe"]
    mx, onnx = qr["mixed"], qr["onnx"]
    counts = ", ".join(f"{n} at {layout}" for layout, n in onnx["counts"].items())
    lines = [
        f"- quantization: ONNX 4/8-bit mixture solved for {qr['recipe']['max_size_mib']} MiB, the largest file "
        f"plan predicts within the storage and memory budgets: weights (bits/block) {counts}; importance-weighted "
        f"block fits (onnxquant), importance matrix from {mx['sensitivity_source'] or 'none'}; every weight's bits "
        "and block are in `quant_recipe.onnx.layout` of manifest.json",
    ]
    return lines + [_why_mixed(mx)]


def _modelfile_note(template_ok: bool | None, fmt: str) -> str:
    if fmt == FORMAT_ONNX:  # no Modelfile is written: Ollama serves GGUF only
        return "none for an ONNX artifact; its folder's chat_template.jinja carries the served template"
    return "ChatML template checked against the model" if template_ok else "template read from the GGUF"


def _recipe_section(m: dict, chosen) -> list[str]:
    if chosen.recipe:
        quant = _onnx_mixed_lines(m) if chosen.fmt == FORMAT_ONNX else _mixed_lines(m)
    else:
        source = m["quant_recipe"]["imatrix_source"] or "none"
        quant = [f"- quantization: {chosen.quant}, importance matrix from {source}"]
    return [
        "## Recipe",
        "",
        f"- merge: into the {m['merge']['config']['merge_into']} base, saved as {m['merge']['config']['dtype']}",
        *quant,
        "- Ollama Modelfile: " + _modelfile_note(m["ollama_template"], chosen.fmt),
        "- full inputs, stage keys and versions: `manifest.json`",
        "",
    ]


def summary(result: BuildResult):
    """The end of `edgeq build`: each stage's state and time, then the result."""
    from rich.console import Group

    rows = [[s, state, f"{secs:.1f} s"] for s, (secs, state) in result.stages.items()]
    t = report.table("build summary", ["stage", "state", "time"], rows)
    checks = {c.name: c for c in result.checks}
    sc = result.scores
    lines = [["artifact", result.artifact], ["choice", result.candidate.label]]
    lines += [["memory", checks["memory"].line()]] if "memory" in checks else []
    lines += [["decode", checks["decode"].line()]] if "decode" in checks else []
    lines += [
        ["mean KLD", checks["kld"].line()],
        [
            "task score",
            f"{sc['metric']}: base {sc['base']:.1f} → merged {sc['merged']:.1f} → artifact {sc['artifact']:.1f} "
            f"(served: {sc['served']:.1f})",
        ],
    ]
    return Group(t, report.table("result", ["", ""], lines))

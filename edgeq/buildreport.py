"""What `edgeq build` shows and leaves behind: the live stage view, the summary, and the output
directory's artifact, Ollama Modelfile, manifest.json, report.md and candidates.png."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

from edgeq import __version__, report
from edgeq.errors import UsageError
from edgeq.spec import (
    BUILD_MANIFEST,
    BUILD_MODELFILE,
    BUILD_PLOT,
    BUILD_REPORT,
    FORMAT_GGUF,
    MANIFEST_SCHEMA,
    PLAN_MARGIN,
    SERVED_GAP_POINTS,
)

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
            report.progress_hook = self._progress
            try:
                yield self
            finally:
                report.progress_hook = None
                self._live = None


def dry_run_view(plan_result: dict, stages: dict, out: Path) -> None:
    """The plan (predicted from the base model: same shapes, prior quality) and the stages that would run."""
    from edgeq.plan import render

    report.out.print(render(plan_result))
    rows = [[s, state] for s, state in stages.items()]
    report.out.print(report.table(f"stages into {out} (dry run: nothing written)", ["stage", "state"], rows))


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
    from edgeq.serving import default_system

    convo = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    try:
        chatml = tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True) == _chatml(convo)
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
    stops = sorted({t for t in (tok.eos_token, "<|im_end|>" if chatml else None) if t})
    lines.append("# Generation ends at the end-of-turn token, as in the evaluation.")
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
    from transformers import AutoTokenizer

    from edgeq.serving import embed

    tok = AutoTokenizer.from_pretrained(model_dir)
    if system.text:
        tok.chat_template = embed(tok.chat_template, system.text, tok)
    modelfile("model.gguf", tok, profile, system)


def plot(candidates: list[dict], chosen: dict, path: Path) -> None:
    """Size vs KLD, colour = decode tok/s, over the measured candidates; the chosen one marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in candidates if r.get("measured")]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if rows:
        xs = [r["measured"]["storage_mib"] for r in rows]
        ys = [max(r["measured"]["kld"], 1e-5) for r in rows]
        cs = [r["measured"]["decode_tok_s"] for r in rows]
        sc = ax.scatter(xs, ys, c=cs, cmap="viridis", s=60, edgecolors="k", linewidths=0.5)
        fig.colorbar(sc, ax=ax, label="decode tok/s (measured here)")
        for r, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(f"{r['format']} {r['quant']}", (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
            if r["format"] == chosen["format"] and r["quant"] == chosen["quant"]:
                ax.scatter([x], [y], s=260, facecolors="none", edgecolors="red", linewidths=2, label="chosen")
        ax.set_yscale("log")
        ax.legend(loc="upper right")
    ax.set_xlabel("artifact size (MiB)")
    ax.set_ylabel("mean KLD vs merged float model (log)")
    ax.set_title("candidates: size vs fidelity vs speed")
    fig.tight_layout()
    from edgeq.io import atomic_file

    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def publish_artifact(src: Path, dst: Path) -> None:
    """A copy, atomically replacing an older artifact. Not a hard link: editing the published file must not
    change the cached one (the manifest's sha256 describes the cache)."""
    from edgeq.io import atomic_dir, atomic_path

    if src.is_file():
        with atomic_path(dst, force=True) as tmp:
            shutil.copyfile(src, tmp)
    else:
        with atomic_dir(dst, force=True, protect=[]) as tmp:
            for f in src.rglob("*"):
                if f.is_file():
                    (tmp / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, tmp / f.relative_to(src))


def _without_answers(score: dict) -> dict:
    return {k: v for k, v in score.items() if k != "answers"}


def write_outputs(ctx, artifact: Path, work: Path, bench_checks: list, quality_checks: list) -> dict:
    """Publish the artifact and write manifest, report, Modelfile and plot; the checks are build's verdict."""
    from transformers import AutoTokenizer

    from edgeq.io import write_json, write_text
    from edgeq.machine import versions

    out = ctx.out
    res = ctx.results
    chosen = res["sweep"]["chosen"]
    publish_artifact(artifact, out / artifact.name)
    template_ok = None
    if chosen["format"] == FORMAT_GGUF:
        tok = AutoTokenizer.from_pretrained(ctx.dir("merge") / "model")
        text, template_ok = modelfile(artifact.name, tok, ctx.profile, ctx.system)
        write_text(out / BUILD_MODELFILE, text)
    plot(res["sweep"]["candidates"], chosen, out / BUILD_PLOT)
    breaches = [c.line() for c in bench_checks + quality_checks if not c.passed]
    chosen_row = next(
        r for r in res["sweep"]["candidates"] if r["format"] == chosen["format"] and r["quant"] == chosen["quant"]
    )
    measured_rss = res["bench"]["results"]["peak_rss_mib"]["median"]
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "edgeq_version": __version__,
        "profile": ctx.profile.as_dict(),
        "inputs": {
            "base": {"path": str(ctx.base), "sha256": ctx.hashes["base"]},
            "data": {"path": str(ctx.data), "sha256": ctx.hashes["data"]},
            "test_data": ctx.test_data and {"path": str(ctx.test_data), "sha256": ctx.hashes["test_data"]},
            "holdout": ctx.holdout,
        },
        "stages": {s: {"key": ctx.keys[s]} for s in ctx.keys},
        "finetune": res["finetune"],
        "merge": {"config": res["merge"]["config"], "verification": res["merge"]["verification"]},
        "quant_recipe": {
            "format": chosen["format"],
            "quant": chosen["quant"],
            "imatrix_source": res["export"].get("imatrix_source"),
            "gates": res["export"].get("gates"),
        },
        "artifact": {
            "path": artifact.name,
            "sha256": res["bench"]["environment"]["artifact_sha256"],  # bench hashed these same bytes
            "bytes": res["export"].get("bytes"),
        },
        "footprint": {
            "predicted_peak_rss_mib": chosen_row["memory_mib"],
            "measured_peak_rss_mib": measured_rss,
            "prediction_error": chosen_row["memory_mib"] / measured_rss - 1,
            "predicted_storage_mib": chosen_row["storage_mib"],
            "measured_storage_mib": res["bench"]["environment"]["artifact_bytes"] / 2**20,
        },
        "fidelity": {k: v for k, v in res["eval"]["artifact"].items() if k not in ("task", "task_served")}
        | {k: _without_answers(res["eval"]["artifact"][k]) for k in ("task", "task_served")},
        "task": {
            **{k: res["eval"][k]["score"] for k in ("base", "merged") if k in res["eval"]},
            "metric": res["eval"]["merged"]["metric"],
            "metric_why": res["eval"]["merged"]["why"],
            "answer_nll": {
                "base": res["eval"]["base"]["answer_nll"],
                "merged": res["eval"]["merged"]["answer_nll"],
                "artifact": res["eval"]["artifact"]["answer_nll"],
            },
            "agreement_with_merged": res["eval"]["agreement"],
        },
        "system_prompt": ctx.system.as_dict(),
        "bench": {
            "settings": res["bench"]["settings"],
            "results": res["bench"]["results"],
            "checks": res["bench"]["checks"],
        },
        "quality_checks": [c.as_dict() for c in quality_checks],
        "ollama_template": template_ok,
        "runtime_config": res["bench"]["environment"].get("runtime_config", {}),
        "versions": versions(
            ("torch", "transformers", "peft", "bitsandbytes", "llama_cpp", "gguf", "onnxruntime", "onnxruntime_genai")
        ),
    }
    write_json(out / "manifest.json", manifest)
    write_text(out / BUILD_REPORT, markdown(ctx, manifest, breaches))
    published = [artifact.name, BUILD_MANIFEST, BUILD_REPORT, BUILD_PLOT]
    published += [BUILD_MODELFILE] if template_ok is not None else []
    return {
        "artifact": str(out / artifact.name),
        "breaches": breaches,
        "manifest": str(out / BUILD_MANIFEST),
        "published": published,
    }


def markdown(ctx, m: dict, breaches: list[str]) -> str:
    res, p = ctx.results, ctx.profile
    fp, task = m["footprint"], m["task"]
    lines = [
        f"# edgeq build — profile `{p.name}`",
        "",
        f"Artifact: `{m['artifact']['path']}` ({m['quant_recipe']['format']} {m['quant_recipe']['quant']}), "
        f"built {time.strftime('%Y-%m-%d %H:%M')} by edgeq {__version__}.",
        "",
        "**Result: " + ("all budgets met**" if not breaches else "budget breached** — " + "; ".join(breaches)),
        "",
        "## Task score on the held-out data",
        "",
    ]
    if task:
        art = m["fidelity"]["task"]["score"]
        served = m["fidelity"]["task_served"]["score"]
        nll, agree = task["answer_nll"], task["agreement_with_merged"]
        sp = m["system_prompt"]
        shown = repr(sp["text"]) if sp["text"] else "the base template's own"
        lines += [
            f"Metric: **{task['metric']}** — {task['metric_why']}. Scores are 0–100; the profile's "
            "max_task_accuracy_drop_points is in points of this metric.",
            "",
            f"| model | {task['metric']} | answer NLL (nats/token) |",
            "|---|---|---|",
            f"| base model | {task['base']:.1f} | {nll['base']['mean_nll']:.3f} |",
            f"| fine-tuned, merged (float32) | {task['merged']:.1f} | {nll['merged']['mean_nll']:.3f} |",
            f"| artifact, prompts as in training | {art:.1f} | {nll['artifact']['mean_nll']:.3f} |",
            f"| **artifact as served** (only the user's turn, its embedded template) | **{served:.1f}** | |",
            "",
            f"Answer NLL: teacher-forced, over {nll['merged']['tokens']} reference-answer tokens; the fine-tune "
            f"lowered it by {nll['base']['mean_nll'] - nll['merged']['mean_nll']:.3f} nats/token. Generation "
            f"agreement with the merged float model: {agree['identical_pct']:.1f} % identical answers, "
            f"{agree['prefix_agreement_pct']:.1f} % of tokens before the first difference.",
            "",
            f"The fine-tune gained **{task['merged'] - task['base']:+.1f} points**; the artifact as served keeps "
            f"{served - task['base']:+.1f} over the base. The quality gate judges the artifact as served.",
            "",
            f"Default system prompt in the artifact: {shown} ({sp['source']}: {sp['why']}).",
            "",
        ]
        if abs(art - served) > SERVED_GAP_POINTS:
            lines += [
                f"**Warning:** served and evaluated scores differ by {abs(art - served):.1f} points (more than "
                f"{SERVED_GAP_POINTS:g}): the artifact served the usual way is not the model that was scored. "
                "Check the default system prompt (`--system-prompt`) and the chat template.",
                "",
            ]
    else:
        lines += ["No --test-data given: task accuracy not measured.", ""]
    bench = res["bench"]["results"]
    lines += [
        "## Footprint and speed (edgeq bench, this machine)",
        "",
        "| | predicted | measured | budget |",
        "|---|---|---|---|",
        f"| peak RSS MiB (ctx {p.max_context_tokens}) | {fp['predicted_peak_rss_mib']:.1f} | "
        f"{fp['measured_peak_rss_mib']:.1f} ({100 * fp['prediction_error']:+.1f} %) | {p.memory_budget_mib} |",
        f"| size MiB | {fp['predicted_storage_mib']:.1f} | {fp['measured_storage_mib']:.1f} | {p.storage_budget_mib} |",
        f"| TTFT ms ({p.prompt_tokens} tokens) | | {bench['ttft_ms']['median']:.0f} | {p.ttft_ms:g} |",
        f"| decode tok/s | | {bench['decode_tok_s']['median']:.1f} | ≥ {p.min_decode_tok_s:g} |",
        f"| mean KLD vs merged | | {m['fidelity']['text']['mean_kld']:.4f} | ≤ {p.max_mean_kld:g} |",
        "",
        "## Candidates",
        "",
        f"Plan at ctx {p.max_context_tokens}, prompt {p.prompt_tokens}, with {PLAN_MARGIN:.0%} memory headroom. "
        f"Measured: built, KLD on held-out text, one bench run. ![candidates]({BUILD_PLOT})",
        "",
        "| candidate | predicted RSS MiB | measured RSS MiB | size MiB | KLD | decode tok/s | fits | why not |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["sweep"]["candidates"]:
        ms = r.get("measured") or {}
        pick = r["format"] == m["quant_recipe"]["format"] and r["quant"] == m["quant_recipe"]["quant"]
        lines.append(
            f"| {'**→** ' if pick else ''}{r['format']} {r['quant']} | {r['memory_mib']:.1f} | "
            f"{ms.get('peak_rss_mib', float('nan')):.1f} | {r['storage_mib']:.1f} | "
            f"{r['kld']:.4f} ({r['kld_source']}) | "
            f"{'-' if r['decode_tok_s'] is None else round(r['decode_tok_s'])} | "
            f"{'yes' if r['fits'] else 'no'} | {'; '.join(r['reasons'])} |"
        )
    lines += [
        "",
        "## Recipe",
        "",
        f"- merge: into the {m['merge']['config']['merge_into']} base, saved as {m['merge']['config']['dtype']}",
        f"- quantization: {m['quant_recipe']['quant']}, importance matrix from "
        f"{m['quant_recipe']['imatrix_source'] or 'none'}",
        "- Ollama Modelfile: "
        + ("ChatML template checked against the model" if m["ollama_template"] else "template read from the GGUF"),
        "- full inputs, stage keys and versions: `manifest.json`",
        "",
    ]
    return "\n".join(lines)


def summary(ctx, view: StageView):
    res = ctx.results
    fp = res["bench"]["results"]
    task = res["eval"]
    rows = [[s, r["state"], "" if r["seconds"] is None else f"{r['seconds']:.1f} s"] for s, r in view.rows.items()]
    t = report.table("build summary", ["stage", "state", "time"], rows)
    chosen = res["sweep"]["chosen"]
    lines = [
        ["artifact", res["report"]["artifact"]],
        ["choice", f"{chosen['format']} {chosen['quant']}"],
        ["peak RSS", f"{fp['peak_rss_mib']['median']:.1f} MiB (budget {ctx.profile.memory_budget_mib})"],
        ["decode", f"{fp['decode_tok_s']['median']:.1f} tok/s"],
        ["mean KLD", f"{task['artifact']['text']['mean_kld']:.4f}"],
    ]
    if "base" in task:
        lines.append(
            [
                "task score",
                f"{task['merged']['metric']}: base {task['base']['score']:.1f} → merged "
                f"{task['merged']['score']:.1f} → artifact {task['artifact']['task']['score']:.1f} (served: "
                f"{task['artifact']['task_served']['score']:.1f})",
            ]
        )
    from rich.console import Group

    return Group(t, report.table("result", ["", ""], lines))

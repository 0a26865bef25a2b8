"""The `edgeq` command line. Each command parses options, builds a config, calls one function."""

from __future__ import annotations

import errno
import math
import os
import sys
import traceback
from pathlib import Path

import click

from edgeq import __version__
from edgeq.errors import BackendError, EdgeqError, UsageError
from edgeq.spec import (
    BENCH_OUTPUTS,
    DEFAULT_QUANT,
    EXIT_CODES,
    EXIT_RUNTIME,
    FORMAT_GGUF,
    FORMAT_ONNX,
    FORMATS,
    MERGE_DTYPES,
    MERGE_POLICIES,
    ONNX_EXECUTION_PROVIDERS,
    QUANT_AUTO,
    QUANT_MODES,
    SWEEP_MODES,
    TASK_METRICS,
    quant_names,
)

_state = {"debug": False}


class Finite(click.FloatRange):
    """A float option: a finite number in range (click's own FLOAT and FloatRange let nan and inf through)."""

    name = "number"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


FINITE = Finite()
METRIC_OPTION = click.option(
    "--metric",
    type=click.Choice(TASK_METRICS),
    default=None,
    help="Task metric (default: from the references: JSON actions → json, labels → exact, free text → chrf).",
)
CALIBRATION_OPTION = click.option(
    "--calibration",
    default=None,
    help="Memory calibration: a file from `edgeq calibrate` or a shipped name (default: the profile's, else the "
    "shipped one for this machine's runtime configuration).",
)
MODEL_OPTION = click.option(
    "--model",
    "model_dir",
    type=click.Path(),
    default=None,
    help="HF model directory (default: embedded SmolLM2-135M-Instruct).",
)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: " + ", ".join(f"{k} {v}" for k, v in EXIT_CODES.items()) + ".",
)
@click.version_option(__version__, prog_name="edgeq")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """edgeq: fine-tune, merge, quantize, export and benchmark a language model for an edge device."""
    _state["debug"] = debug
    if not debug:  # edgeq draws its own progress; Hugging Face's per-load bars and info lines bury it
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor(as_json: bool) -> None:
    """Check every backend with a real operation; exit 1 if a required one is broken."""
    from edgeq import report
    from edgeq.doctor import OK, run_checks, runtime_configuration
    from edgeq.machine import platform_info

    checks, plat = run_checks(), platform_info()
    runtime_cfg = runtime_configuration()
    if as_json:
        report.print_json({"platform": plat, "runtime_config": runtime_cfg, "backends": [c.__dict__ for c in checks]})
    else:
        llama = runtime_cfg["llama_cpp"]
        rows = [[k, ", ".join(v) if isinstance(v, list) else v] for k, v in plat.items()]
        rows.append(
            [
                "llama.cpp config",
                llama.get("error")
                or f"extra buffer types {'on' if llama['extra_buffer_types'] else 'off'}: {llama['reason']}",
            ]
        )
        report.out.print(report.table("platform", ["key", "value"], rows))
        style = {"ok": "green", "missing": "yellow", "broken": "red"}
        report.out.print(
            report.table(
                "backends",
                ["backend", "required", "status", "version", "detail"],
                [
                    [c.name, "yes" if c.required else "no", f"[{style[c.status]}]{c.status}[/]", c.version, c.detail]
                    for c in checks
                ],
            )
        )
    failed = [c for c in checks if c.required and c.status != OK]
    if failed:
        raise BackendError(
            "required backend " + ", ".join(f"{c.name} is {c.status} ({c.detail})" for c in failed),
            None,
            "reinstall it as the README's set-up commands do",
        )


@cli.group()
def profiles() -> None:
    """Device profiles: memory, storage, latency and quality budgets."""


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def profiles_list(as_json: bool) -> None:
    """List the shipped profiles."""
    from edgeq import report
    from edgeq.profiles import list_profiles

    items = list_profiles()
    if as_json:
        report.print_json([p.as_dict() for p in items])
        return
    report.out.print(
        report.table(
            "device profiles",
            ["name", "memory MiB", "storage MiB", "ctx", "threads", "formats", "TTFT ms", "decode tok/s"],
            [
                [
                    p.name,
                    p.memory_budget_mib,
                    p.storage_budget_mib,
                    p.max_context_tokens,
                    p.threads,
                    ", ".join(p.formats),
                    f"{p.ttft_ms:g} @ {p.prompt_tokens} tok",
                    f"≥ {p.min_decode_tok_s:g}",
                ]
                for p in items
            ],
        )
    )


@profiles.command("show")
@click.argument("profile")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def profiles_show(profile: str, as_json: bool) -> None:
    """Show one profile (a shipped NAME or a PATH to YAML), validated, with its rationale."""
    from edgeq import report
    from edgeq.profiles import load_profile
    from edgeq.spec import PROFILE_FIELDS

    p = load_profile(profile)
    if as_json:
        report.print_json(p.as_dict())
        return
    rows = []
    for f in PROFILE_FIELDS:
        if f.kind == "rationale":
            continue
        value = getattr(p, f.name)
        value = ", ".join(value) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) else value
        rows.append([f"{f.section}.{f.name}" if f.section else f.name, value, p.rationale.get(f.name, f.help)])
    report.out.print(report.table(f"profile {p.name}", ["field", "value", "rationale"], rows, caption=p.source))


@cli.group()
def model() -> None:
    """The base model: the embedded default or a local Hugging Face directory."""


@model.command("info")
@MODEL_OPTION
def model_info(model_dir: str | None) -> None:
    """Resolve a model (converting the embedded default on first use) and summarize it."""
    from edgeq import report
    from edgeq.basemodel import model_summary, resolve_model

    path = resolve_model(model_dir)
    info = {"path": str(path), **model_summary(path)}
    report.out.print(report.table("model", ["key", "value"], [[k, v] for k, v in info.items()]))


@cli.command()
@click.option("--base", type=click.Path(), default=None, help="HF model dir (default: embedded SmolLM2-135M-Instruct).")
@click.option("--data", required=True, type=click.Path(), help="JSONL: messages or prompt/response per line.")
@click.option("--out", required=True, type=click.Path(), help="Output directory.")
@click.option(
    "--quant",
    type=click.Choice(QUANT_MODES),
    default="nf4",
    show_default=True,
    help="Frozen base storage; none = plain LoRA.",
)
@click.option("--double-quant/--no-double-quant", default=True, show_default=True)
@click.option("--lora-r", type=int, default=16, show_default=True)
@click.option("--lora-alpha", type=int, default=32, show_default=True)
@click.option("--lora-dropout", type=FINITE, default=0.0, show_default=True)
@click.option("--target-modules", default=None, help="Comma-separated linear names (default: all decoder linears).")
@click.option("--lr", type=FINITE, default=1e-3, show_default=True)
@click.option("--epochs", type=FINITE, default=1.0, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop after N optimizer steps (overrides --epochs).")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--grad-accum", type=int, default=1, show_default=True)
@click.option("--seq-len", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-split", type=FINITE, default=0.05, show_default=True)
@click.option("--save-every", type=int, default=25, show_default=True, help="Checkpoint every N steps.")
@click.option("--strict", is_flag=True, help="Reject examples longer than --seq-len instead of truncating.")
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint in --out.")
@click.option("--force", is_flag=True, help="Replace an existing adapter in --out.")
@click.option(
    "--gradient-checkpointing/--no-gradient-checkpointing",
    default=None,
    help="Recompute activations in backward [default: on CUDA; on a CPU only where memory is short].",
)
@click.option(
    "--optim-bits",
    type=click.Choice(["8", "32"]),
    default="8",
    show_default=True,
    help="Paged AdamW state precision on CUDA.",
)
def finetune(target_modules, optim_bits, **kw) -> None:
    """QLoRA fine-tune: NF4 + double-quant frozen base, LoRA adapters on top."""
    from edgeq import report
    from edgeq.finetune import FinetuneConfig, summary_table
    from edgeq.finetune import finetune as run

    if target_modules:
        kw["target_modules"] = tuple(t.strip() for t in target_modules.split(",") if t.strip())
    summary = run(FinetuneConfig(optim_bits=int(optim_bits), **kw))
    if os.environ.get("RANK", "0") == "0":  # under torchrun one summary, from the rank that saved
        report.out.print(summary_table(summary, Path(kw["out"])))


@cli.command()
@click.option("--base", type=click.Path(), default=None, help="HF base dir (default: embedded SmolLM2-135M-Instruct).")
@click.option("--adapter", required=True, type=click.Path(), help="Adapter dir, or the finetune --out holding it.")
@click.option("--out", required=True, type=click.Path(), help="Output HF model directory.")
@click.option("--dtype", type=click.Choice(MERGE_DTYPES), default=MERGE_DTYPES[0], show_default=True)
@click.option(
    "--merge-into",
    type=click.Choice(MERGE_POLICIES),
    default=MERGE_POLICIES[0],
    show_default=True,
    help="Base weights to merge into: after the 4-bit round trip (what training saw) or original.",
)
@click.option("--force", is_flag=True, help="Replace an existing --out (kept intact if the merge fails).")
@click.option(
    "--system-prompt",
    default=None,
    help="Default system prompt for the merged model's chat template (what it is served with when a request has none).",
)
def merge(**kw) -> None:
    """Merge a LoRA adapter into an un-quantized base; verify logits before writing."""
    from edgeq import report
    from edgeq.merge import MergeConfig, merge_table
    from edgeq.merge import merge as run

    report.out.print(merge_table(run(MergeConfig(**kw)), kw["out"]))


@cli.command()
@MODEL_OPTION
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=FORMAT_GGUF, show_default=True)
@click.option(
    "--quant",
    default=None,
    help=". ".join(
        f"{fmt.upper()}: " + ", ".join(q + (" (default)" if q == DEFAULT_QUANT[fmt] else "") for q in quant_names(fmt))
        for fmt in FORMATS
    )
    + f". GGUF {QUANT_AUTO}: a per-tensor mixture sized to --max-size-mib / --max-rss-mib; ONNX {QUANT_AUTO}: "
    "4- and 8-bit weights sized to --max-size-mib.",
)
@click.option("--out", required=True, type=click.Path(), help="Output artifact path (GGUF file or ONNX folder).")
@click.option(
    "--execution-provider",
    type=click.Choice(ONNX_EXECUTION_PROVIDERS),
    default=ONNX_EXECUTION_PROVIDERS[0],
    show_default=True,
    help="ONNX target.",
)
@click.option("--force", is_flag=True, help="Replace an existing --out (kept intact if the export fails).")
@click.option("--allow-pickle", is_flag=True, help="Accept pickle weights (loaded with torch weights_only=True).")
@click.option(
    "--imatrix-data",
    type=click.Path(),
    default=None,
    help="GGUF, ONNX int4: calibration JSONL (e.g. the fine-tuning data) for an importance matrix.",
)
@click.option("--max-size-mib", type=Finite(min=1), default=None, help=f"--quant {QUANT_AUTO}: file size.")
@click.option("--max-rss-mib", type=Finite(min=16), default=None, help=f"--quant {QUANT_AUTO}: peak RSS at --ctx.")
@click.option(
    "--ctx", type=click.IntRange(min=16), default=2048, show_default=True, help="Context --max-rss-mib is for."
)
@click.option(
    "--tensor-type",
    "tensor_types",
    multiple=True,
    metavar="NAME=TYPE",
    help=f"--quant {QUANT_AUTO}: pin a tensor to a ggml type (e.g. token_embd.weight=Q8_0); repeatable.",
)
def export(
    model_dir,
    fmt,
    quant,
    out,
    execution_provider,
    force,
    allow_pickle,
    imatrix_data,
    max_size_mib,
    max_rss_mib,
    ctx,
    tensor_types,
) -> None:
    """Export to GGUF or ONNX; gates (tokenizer, eos, chat template, fidelity) must pass first."""
    from edgeq import report

    targets = max_size_mib is not None or max_rss_mib is not None
    auto = quant == QUANT_AUTO
    if auto != targets or (tensor_types and not auto):
        raise UsageError(
            f"--max-size-mib / --max-rss-mib / --tensor-type go with --quant {QUANT_AUTO}",
            None,
            f"pass --quant {QUANT_AUTO} with --max-size-mib and/or --max-rss-mib (GGUF; ONNX: --max-size-mib)",
        )
    if fmt == FORMAT_GGUF:
        from edgeq.export.gguf import GgufExport, export_gguf, export_table

        result = export_gguf(
            GgufExport(
                model=model_dir,
                out=out,
                quant=quant or DEFAULT_QUANT[FORMAT_GGUF],
                force=force,
                allow_pickle=allow_pickle,
                imatrix_data=imatrix_data,
                max_size_mib=max_size_mib,
                max_rss_mib=max_rss_mib,
                ctx=ctx,
                forced=parse_tensor_types(tensor_types),
            )
        )
    else:
        from edgeq.export.onnx import OnnxExport, export_onnx, export_table

        if max_rss_mib is not None or tensor_types:
            raise UsageError(
                "--max-rss-mib and --tensor-type are GGUF only", None, "ONNX --quant auto takes --max-size-mib"
            )
        result = export_onnx(
            OnnxExport(
                model=model_dir,
                out=out,
                quant=quant or DEFAULT_QUANT[FORMAT_ONNX],
                execution_provider=execution_provider,
                force=force,
                allow_pickle=allow_pickle,
                imatrix_data=imatrix_data,
                max_size_mib=max_size_mib,
            )
        )
    report.out.print(export_table(result))


def parse_tensor_types(pairs: tuple[str, ...]) -> dict:
    """NAME=TYPE pairs → {tensor: ggml type}, every pair checked."""
    from gguf.constants import GGMLQuantizationType

    out = {}
    for pair in pairs:
        name, _, kind = pair.partition("=")
        if not name or kind.upper() not in GGMLQuantizationType.__members__:
            raise UsageError(
                f"--tensor-type {pair!r} is not NAME=TYPE with a ggml type", None, "e.g. token_embd.weight=Q8_0"
            )
        out[name] = kind.upper()
    return out


@cli.command("eval")
@click.argument("artifact", type=click.Path())
@click.option(
    "--reference",
    type=click.Path(),
    default=None,
    help="Float HF model dir the artifact came from (default: embedded SmolLM2-135M-Instruct).",
)
@click.option("--data", type=click.Path(), default=None, help="Task JSONL: adds KLD on its text and exact match.")
@click.option("--limit", type=int, default=None, help="Score only the first N task examples.")
@click.option(
    "--served", is_flag=True, help="With --data: also score the artifact as served (user's turns, its own template)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@METRIC_OPTION
def eval_artifact(artifact, reference, data, limit, served, metric, as_json) -> None:
    """Fidelity of a GGUF/ONNX artifact vs its float reference: perplexity, KLD, top-1, task score."""
    from edgeq import report
    from edgeq.evaluate import evaluate

    if served and not data:
        raise UsageError("--served scores the task: it needs --data", None, "add --data FILE.jsonl")
    r = evaluate(artifact, reference, data, limit, served, metric)
    if as_json:
        report.print_json(r)
        return
    rows = [
        [
            name,
            r[name]["positions"],
            f"{r[name]['ppl_reference']:.3f}",
            f"{r[name]['ppl_artifact']:.3f}",
            f"{r[name]['mean_kld']:.4f}",
            f"{100 * r[name]['top1_agreement']:.1f}",
        ]
        for name in ("text", "task_text")
        if name in r
    ]
    report.out.print(
        report.table(
            f"fidelity of {r['artifact']}", ["on", "positions", "PPL ref", "PPL artifact", "mean KLD", "top-1 %"], rows
        )
    )
    for key, how in (("task", "prompts as in training"), ("task_served", "as served: user's turns, own template")):
        if key in r:
            report.out.print(f"task {r[key]['metric']} {r[key]['score']:.1f} (n={r[key]['n']}; {how}; {r[key]['why']})")
    if "answer_nll" in r:
        report.out.print(
            f"reference-answer NLL {r['answer_nll']['mean_nll']:.3f} nats/token (ppl {r['answer_nll']['ppl']:.2f})"
        )


@cli.command()
@click.argument("artifact", type=click.Path())
@click.option("--profile", default=None, help="Device profile NAME or PATH: gate every budget (exit 3 on breach).")
@click.option("--prompt-tokens", type=int, default=None, help="Prompt length (default: the profile's, else 512).")
@click.option("--gen-tokens", type=int, default=128, show_default=True)
@click.option("--reps", type=int, default=5, show_default=True, help="Repetitions, each in a fresh process.")
@click.option("--threads", type=int, default=None, help="Default: the profile's, else all cores.")
@click.option("--ctx", type=int, default=None, help="Default: the profile's context, else prompt + generated.")
@click.option("--output", type=click.Choice(BENCH_OUTPUTS), default=BENCH_OUTPUTS[0], show_default=True)
@click.option("--out", type=click.Path(), default=None, help="Write the output here instead of stdout.")
@click.option("--force", is_flag=True, help="Replace an existing --out that edgeq wrote.")
@click.option("--baseline", type=click.Path(), default=None, help="Earlier bench JSON: exit 3 on regression.")
@click.option(
    "--regression-pct",
    type=FINITE,
    default=5.0,
    show_default=True,
    help="Allowed regression vs --baseline on tok/s and peak memory.",
)
@click.option(
    "--gpu-layers",
    type=int,
    default=0,
    show_default=True,
    help="GGUF: layers to offload with a GPU build of llama.cpp; device memory then counts in the memory gate.",
)
def bench(**kw) -> None:
    """Benchmark a GGUF/ONNX artifact; with --profile or --baseline, a CI gate (exit 3)."""
    from edgeq.bench import BenchConfig, gate
    from edgeq.bench import bench as run
    from edgeq.benchreport import publish

    cfg = BenchConfig(**kw)
    record = run(cfg)
    publish(record, cfg.output, cfg.out)
    gate(record)


@cli.command()
@click.option("--profile", required=True, help="Device profile NAME or PATH.")
@MODEL_OPTION
@click.option("--ctx", type=int, default=None, help="Context to plan for (default: the profile's).")
@click.option("--measured-from", type=click.Path(), default=None, help="A build's --out: rank by its measured KLD.")
@click.option(
    "--data", type=click.Path(), default=None, help="Chat JSONL whose activations weigh a mixed recipe's errors."
)
@CALIBRATION_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan(profile, model_dir, ctx, measured_from, data, calibration, as_json) -> None:
    """Predict memory and size of every candidate the profile allows; pick the best that fits (exit 3: none)."""
    from edgeq import report
    from edgeq.export.gguf import write_f16_gguf
    from edgeq.plan import NoFitError, PlanConfig
    from edgeq.plan import plan as run
    from edgeq.planreport import render
    from edgeq.sweep import measured_from as read_measured

    cfg = PlanConfig(profile=profile, model=model_dir, ctx=ctx, calibration=calibration, data=data)
    measured = read_measured(measured_from) if measured_from else None
    try:
        result, error = run(cfg, write_f16_gguf, measured), None
    except NoFitError as e:  # the table still shows why each candidate misses
        result, error = e.plan, e
    for w in result.calibration["warnings"]:
        report.err.print(f"[yellow]note:[/] {w}")
    if as_json:
        report.print_json(result.as_dict())
    else:
        report.out.print(render(result))
    if error is not None:
        raise error


@cli.command()
@click.option("--profile", required=True, help="Device profile NAME or PATH.")
@click.option("--base", type=click.Path(), default=None, help="HF base model dir (default: embedded SmolLM2-135M).")
@click.option("--data", type=click.Path(), default=None, help="Training JSONL (default: the example drone data).")
@click.option(
    "--test-data",
    type=click.Path(),
    default=None,
    help="Held-out task JSONL (default: the example's with the example data, else a seeded 10 % of --data).",
)
@click.option("--out", type=click.Path(), default=None, help="Output directory (default: builds/PROFILE).")
@click.option("--dry-run", is_flag=True, help="Print the plan and the stages that would run; write nothing.")
@click.option("--max-steps", type=int, default=None, help="Cap the fine-tune's optimizer steps.")
@click.option("--eval-limit", type=int, default=None, help="Score only the first N held-out task examples.")
@click.option("--reps", type=int, default=3, show_default=True, help="Bench repetitions (fresh processes).")
@CALIBRATION_OPTION
@METRIC_OPTION
@click.option(
    "--system-prompt",
    default=None,
    help="The artifact's default system prompt (default: the one that opens most training conversations; '' keeps "
    "the base template's).",
)
@click.option(
    "--sweep",
    type=click.Choice(SWEEP_MODES),
    default=SWEEP_MODES[0],
    show_default=True,
    help="first-fit: build candidates in order of expected quality, stop at the first that meets every budget; "
    "all: build and measure every candidate that may fit (full table and plot).",
)
def build(**kw) -> None:
    """Fine-tune → merge → plan → export → eval → bench → report, cached per stage (exit 3: a budget breached)."""
    from edgeq import report
    from edgeq.build import BuildConfig, dry_run, gate
    from edgeq.build import build as run
    from edgeq.buildreport import dry_run_view, summary

    cfg = BuildConfig(**kw)
    if cfg.dry_run:
        planned, stages = dry_run(cfg)
        report.out.print(dry_run_view(planned, stages, cfg.out or f"builds/{planned.profile}"))
        return
    result = run(cfg)
    report.out.print(summary(result))
    gate(result)


@cli.command()
@click.option("--out", required=True, type=click.Path(), help="Calibration JSON to write.")
@click.option("--threads", type=int, default=None, help="Runtime threads (default: all cores).")
@click.option("--onnx/--no-onnx", default=None, help="Measure ONNX too (default: when the ONNX builder is installed).")
@MODEL_OPTION
@click.option("--points", type=click.Path(), default=None, help="Raw measurements: reuse this JSON, else save it.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
def calibrate(out, threads, onnx, model_dir, points, force) -> None:
    """Measure plan's memory terms on this machine (the target): runtime-only for GGUF, a few minutes."""
    from edgeq import report
    from edgeq.calibrate import CalibrateConfig
    from edgeq.calibrate import calibrate as run

    result = run(CalibrateConfig(out=out, threads=threads, onnx=onnx, model=model_dir, points=points, force=force))
    rows = [
        [
            f"{p['format']} {p['quant']}",
            p["shape"],
            p["ctx"],
            p["prompt"],
            f"{p['measured_mib']:.1f}",
            f"{p['predicted_mib']:.1f}",
            f"{100 * p['error']:+.1f} %",
        ]
        for p in result["points"]
    ]
    worst = max(abs(p["error"]) for p in result["points"])
    report.out.print(
        report.table(
            f"calibration written to {result['out']}",
            ["candidate", "shape", "ctx", "prompt", "measured MiB", "predicted MiB", "error"],
            rows,
            caption=f"worst error {100 * worst:.1f} % over {len(rows)} points; "
            f"measured on {result['calibration']['measured_on']['cpu']}",
        )
    )


@cli.command("run")
@click.argument("artifact", type=click.Path())
@click.argument("prompt", required=False)
@click.option("--system", default=None, help="System prompt (default: the one the artifact's template carries).")
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=FINITE, default=0.0, show_default=True, help="0 = greedy, as edgeq scores it.")
@click.option("--ctx", type=int, default=2048, show_default=True, help="Context window in tokens.")
def run_artifact(**kw) -> None:
    """Talk to an artifact as it is served: one PROMPT, or an interactive loop (Ctrl-D quits)."""
    from edgeq.chat import RunConfig, run

    run(RunConfig(**kw))


@cli.command("eval-task")
@MODEL_OPTION
@click.option("--data", required=True, type=click.Path(), help="Held-out JSONL; the last assistant turn is the answer.")
@click.option("--limit", type=int, default=None, help="Score only the first N examples.")
@METRIC_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def eval_task(model_dir, data, limit, metric, as_json) -> None:
    """Task score of an HF model's greedy answers, by the metric the references call for (or --metric)."""
    from edgeq import report
    from edgeq.basemodel import resolve_model
    from edgeq.task import eval_task as run

    result = run(resolve_model(model_dir), data, limit, metric)
    if as_json:
        report.print_json(result)
        return
    report.out.print(
        report.table(
            "task score",
            ["model", "examples", "metric", "score", "why"],
            [[result["model"], result["n"], result["metric"], f"{result['score']:.1f}", result["why"]]],
        )
    )


def _missing_toolchain(e: Exception) -> BackendError | None:
    """The runtime-only install (`pip install edgeq`) meeting a workstation command: say which extra to install."""
    from edgeq.doctor import TOOLCHAIN

    full = (*TOOLCHAIN, "tokenizers", "matplotlib", "onnx_ir", "jinja2")  # the rest of the [full] extra
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in full:
        return BackendError(
            f"this command needs the full toolchain (Python module {e.name!r} is not installed)",
            None,
            'install it: pip install torch==2.13.0 && pip install "edgeq[full]"',
        )
    return None


# A path the user named is wrong: a usage error. Anything else (a full disk, an I/O error) is a runtime one.
_PATH_ERRNOS = frozenset(
    {errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ELOOP, errno.EROFS}
)


def _os_error(e: OSError) -> EdgeqError:
    where = os.fsdecode(e.filename) if e.filename is not None else None
    what = e.strerror or str(e)
    if e.errno in _PATH_ERRNOS:
        return UsageError(what, where[:300] if where else None, "check the path and its permissions")
    return EdgeqError(what, where[:300] if where else None, "check the disk and the path")


def main() -> None:
    """Console entry point: one line per error, documented exit codes, tracebacks only with --debug."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        code = EXIT_RUNTIME
    except click.ClickException as e:
        e.show()
        code = e.exit_code
    except click.exceptions.Exit as e:
        code = e.exit_code
    except EdgeqError as e:
        if _state["debug"]:
            traceback.print_exc()
        click.echo(e.line(), err=True)
        code = e.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        code = 130
    except OSError as e:  # a path the system refuses (a name over 255 bytes, no permission, a full disk)
        if _state["debug"]:
            traceback.print_exc()
        error = _os_error(e)
        click.echo(error.line(), err=True)
        code = error.exit_code
    except Exception as e:  # a bug in edgeq or a backend: still one line unless --debug
        if _state["debug"]:
            traceback.print_exc()
        missing = _missing_toolchain(e)
        if missing:
            click.echo(missing.line(), err=True)
            code = missing.exit_code
        else:
            click.echo(f"error: internal error: {type(e).__name__}: {e} — rerun with --debug and report it", err=True)
            code = EXIT_RUNTIME
    sys.exit(code or 0)

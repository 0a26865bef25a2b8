"""The `edgeq` command line. Each command parses options, builds a config, calls one function, prints its view.

Options are made from the config dataclasses' fields (`options`): a default, a type, a range and a help text are
written once, in the field (config.setting), and read here.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import sys
import traceback
import warnings

import click

from edgeq import __version__, report
from edgeq.basemodel import MODEL_HELP, model_summary, resolve_model
from edgeq.bench import BenchConfig, bench
from edgeq.bench import gate as bench_gate
from edgeq.benchreport import publish
from edgeq.build import BuildConfig, build, dry_run
from edgeq.build import gate as build_gate
from edgeq.buildreport import dry_run_view, finetune_table, summary
from edgeq.calibrate import CalibrateConfig, calibrate
from edgeq.calibrate import view as calibration_view
from edgeq.chat import RunConfig, run
from edgeq.compare import CompareConfig, compare_methods
from edgeq.compare import view as compare_view
from edgeq.doctor import TOOLCHAIN, run_checks, runtime_configuration, verdict
from edgeq.doctor import view as doctor_view
from edgeq.errors import BackendError, EdgeqError, UsageError
from edgeq.evaluate import EvalConfig, evaluate
from edgeq.evaluate import view as eval_view
from edgeq.export.adapter import adapter_table, export_adapter
from edgeq.export.gguf import GgufExport, export_gguf, write_f16_gguf
from edgeq.export.gguf import export_table as gguf_table
from edgeq.export.onnx import OnnxExport, export_onnx
from edgeq.export.onnx import export_table as onnx_table
from edgeq.finetune import FinetuneConfig, finetune, summary_table
from edgeq.finetune import plan as plan_finetune
from edgeq.machine import platform_info
from edgeq.merge import MergeConfig, merge, merge_table
from edgeq.plan import NoFitError, PlanConfig, plan
from edgeq.planreport import render as plan_view
from edgeq.profiles import list_profiles, list_view, load_profile
from edgeq.profiles import view as profile_view
from edgeq.spec import DEFAULT_QUANT, EXIT_CODES, EXIT_RUNTIME, FORMAT_GGUF, FORMATS, QUANT_AUTO, quant_names
from edgeq.sweep import measured_from
from edgeq.task import TaskConfig, eval_task
from edgeq.task import view as task_view

_state = {"debug": False}


class Finite(click.FloatRange):
    """A float option: a finite number in range (click's own FLOAT and FloatRange let nan and inf through)."""

    name = "number"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv

    def _describe_range(self) -> str:
        return "" if self.min is None and self.max is None else super()._describe_range()


def _listed(ctx, param, value):
    """A comma-separated option as the tuple its field holds (None: the field's default)."""
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


def _param(f: dataclasses.Field):
    """The Click parameter of one config field: its spelling, type, range, default and help, all from the field."""
    meta, kind = f.metadata, str(f.type)
    required = f.default is dataclasses.MISSING
    default = None if required else f.default
    if meta["argument"]:  # click (8.5) counts an explicit default, even None, as a value: a required one gets none
        return click.argument(f.name, required=True) if required else click.argument(f.name, default=default)
    flag = meta["flag"] or "--" + f.name.replace("_", "-")
    kw = {"help": meta["help"][:1].upper() + meta["help"][1:] + ".", "required": required}
    if kind == "bool" and not default:
        return click.option(flag, f.name, is_flag=True, default=False, **kw)
    if kind.startswith("bool"):  # on by default, or undecided (None): both spellings
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=default, show_default=default is not None, **kw)
    if meta["listed"]:
        return click.option(flag, f.name, default=None, callback=_listed, **kw)
    if meta["repeated"]:
        return click.option(flag, f.name, multiple=True, default=default, metavar="PATH", **kw)
    if meta["choices"] is not None:
        choices = [str(c) for c in meta["choices"]]
        convert = (lambda ctx, p, v: v if v is None else int(v)) if kind.startswith("int") else None
        kw |= {"type": click.Choice(choices), "callback": convert}
        default = None if default is None else str(default)
    elif kind.startswith("int"):
        kw["type"] = click.IntRange(meta["min"], meta["max"]) if meta["min"] is not None else click.INT
    elif kind.startswith("float"):
        kw["type"] = Finite(meta["min"], meta["max"])
    if not required:
        kw |= {"default": default, "show_default": default is not None}
    return click.option(flag, f.name, **kw)


def options(cls, *skip: str):
    """Every field of config dataclass `cls` as a Click parameter, in field order (but those in `skip` and those
    whose flag is "": settings the command line does not offer)."""
    params = [_param(f) for f in dataclasses.fields(cls) if f.name not in skip and f.metadata.get("flag") != ""]

    def apply(command):
        for p in reversed(params):
            command = p(command)
        return command

    return apply


def _keep(cls, kw: dict) -> dict:
    """The options that are `cls`'s fields; None means the field's default (a listed option left out)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in kw.items() if k in names and v is not None}


JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


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
        # libraries' notices of their own future API changes (transformers' is_gradient_checkpointing, mid-build)
        # are not the user's to act on; --debug shows them
        warnings.filterwarnings("ignore", category=FutureWarning)


@cli.command()
@JSON_OPTION
def doctor(as_json: bool) -> None:
    """Check every backend with a real operation; exit 1 if a required one is broken."""
    checks, plat, runtime_cfg = run_checks(), platform_info(), runtime_configuration()
    if as_json:
        report.print_json({"platform": plat, "runtime_config": runtime_cfg, "backends": [c.__dict__ for c in checks]})
    else:
        for part in doctor_view(checks, plat, runtime_cfg):
            report.out.print(part)
    verdict(checks)


@cli.group()
def profiles() -> None:
    """Device profiles: memory, storage, latency and quality budgets."""


@profiles.command("list")
@JSON_OPTION
def profiles_list(as_json: bool) -> None:
    """List the shipped profiles."""
    items = list_profiles()
    report.print_json([p.as_dict() for p in items]) if as_json else report.out.print(list_view(items))


@profiles.command("show")
@click.argument("profile")
@JSON_OPTION
def profiles_show(profile: str, as_json: bool) -> None:
    """Show one profile (a shipped NAME or a PATH to YAML), validated, with its rationale."""
    p = load_profile(profile)
    report.print_json(p.as_dict()) if as_json else report.out.print(profile_view(p))


@cli.group()
def model() -> None:
    """The base model: the embedded default or a local Hugging Face directory."""


@model.command("info")
@click.option("--model", "model_dir", default=None, help=MODEL_HELP[:1].upper() + MODEL_HELP[1:] + ".")
def model_info(model_dir: str | None) -> None:
    """Resolve a model (converting the embedded default on first use) and summarize it."""
    path = resolve_model(model_dir)
    info = {"path": str(path), **model_summary(path)}
    report.out.print(report.table("model", ["key", "value"], [[k, v] for k, v in info.items()]))


@cli.command("finetune")
@options(FinetuneConfig)
def finetune_command(**kw) -> None:
    """Fine-tune: QLoRA (NF4 + double-quant frozen base, LoRA adapters on top), LoRA or full (--method)."""
    cfg = FinetuneConfig(**_keep(FinetuneConfig, kw))
    if cfg.dry_run:
        report.out.print(finetune_table(plan_finetune(cfg)))
        return
    result = finetune(cfg)
    if os.environ.get("RANK", "0") == "0":  # under torchrun one summary, from the rank that saved
        report.out.print(summary_table(result))


@cli.command("merge")
@options(MergeConfig)
def merge_command(**kw) -> None:
    """Merge a LoRA adapter into an un-quantized base; verify logits before writing."""
    report.out.print(merge_table(merge(MergeConfig(**kw))))


_QUANT_HELP = (
    ". ".join(
        f"{fmt.upper()}: " + ", ".join(q + (" (default)" if q == DEFAULT_QUANT[fmt] else "") for q in quant_names(fmt))
        for fmt in FORMATS
    )
    + f". GGUF {QUANT_AUTO}: a per-tensor mixture sized to --max-size-mib / --max-rss-mib; ONNX {QUANT_AUTO}: "
    "4- and 8-bit weights sized to --max-size-mib."
)


@cli.command("export")
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default=FORMAT_GGUF, show_default=True, help="Artifact format."
)
@options(GgufExport, "quant")
@click.option("--quant", default=None, help=_QUANT_HELP)
@options(OnnxExport, *(f.name for f in dataclasses.fields(GgufExport)))
@click.option(
    "--tensor-type",
    "tensor_types",
    multiple=True,
    metavar="NAME=TYPE",
    help=f"--quant {QUANT_AUTO}: pin a tensor to a ggml type (e.g. token_embd.weight=Q8_0); repeatable.",
)
def export_command(fmt: str, tensor_types: tuple[str, ...], **kw) -> None:
    """Export to GGUF or ONNX; gates (tokenizer, eos, chat template, fidelity) must pass first."""
    targets = kw["max_size_mib"] is not None or kw["max_rss_mib"] is not None
    if (kw["quant"] == QUANT_AUTO) != targets or (tensor_types and kw["quant"] != QUANT_AUTO):
        raise UsageError(
            f"--max-size-mib / --max-rss-mib / --tensor-type go with --quant {QUANT_AUTO}",
            None,
            f"pass --quant {QUANT_AUTO} with --max-size-mib and/or --max-rss-mib (GGUF; ONNX: --max-size-mib)",
        )
    if kw["adapter"]:
        if fmt != FORMAT_GGUF or targets:
            raise UsageError("--adapter exports a GGUF LoRA adapter", None, "pass --format gguf and no size targets")
        report.out.print(adapter_table(export_adapter(GgufExport(**_keep(GgufExport, kw)))))
        return
    if fmt == FORMAT_GGUF:
        cfg = GgufExport(**_keep(GgufExport, kw), forced=parse_tensor_types(tensor_types))
        report.out.print(gguf_table(export_gguf(cfg)))
        return
    if kw["max_rss_mib"] is not None or tensor_types:
        raise UsageError(
            "--max-rss-mib and --tensor-type are GGUF only", None, "ONNX --quant auto takes --max-size-mib"
        )
    report.out.print(onnx_table(export_onnx(OnnxExport(**_keep(OnnxExport, kw)))))


def parse_tensor_types(pairs: tuple[str, ...]) -> dict:
    """NAME=TYPE pairs → {tensor: ggml type}, every pair checked."""
    from gguf.constants import GGMLQuantizationType  # deferred: gguf-py's import costs the CLI's start-up

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
@options(EvalConfig)
@JSON_OPTION
def eval_command(as_json: bool, **kw) -> None:
    """Fidelity of a GGUF/ONNX artifact vs its float reference: perplexity, KLD, top-1, task score."""
    cfg = EvalConfig(**kw)
    if cfg.served and not cfg.data:
        raise UsageError("--served scores the task: it needs --data", None, "add --data FILE.jsonl")
    r = evaluate(cfg.artifact, cfg.reference, cfg.data, cfg.limit, cfg.served, cfg.metric, cfg.adapter)
    if as_json:
        report.print_json(r.as_dict())
        return
    for part in eval_view(r):
        report.out.print(part)


@cli.command("bench")
@options(BenchConfig)
def bench_command(**kw) -> None:
    """Benchmark a GGUF/ONNX artifact; with --profile or --baseline, a CI gate (exit 3)."""
    cfg = BenchConfig(**kw)
    result = bench(cfg)
    publish(result.as_dict(), cfg.output, cfg.out)
    bench_gate(result)


@cli.command("plan")
@options(PlanConfig)
@click.option("--measured-from", "build_out", default=None, help="A build's --out: rank by what its sweep measured.")
@JSON_OPTION
def plan_command(build_out: str | None, as_json: bool, **kw) -> None:
    """Predict memory and size of every candidate the profile allows; pick the best that fits (exit 3: none)."""
    measured = measured_from(build_out) if build_out else None
    try:
        result, error = plan(PlanConfig(**kw), write_f16_gguf, measured), None
    except NoFitError as e:  # the table still shows why each candidate misses
        result, error = e.plan, e
    for w in result.calibration["warnings"]:
        report.err.print(f"[yellow]note:[/] {w}")
    report.print_json(result.as_dict()) if as_json else report.out.print(plan_view(result))
    if error is not None:
        raise error


@cli.command("build")
@options(BuildConfig)
def build_command(**kw) -> None:
    """Fine-tune → merge → plan → export → eval → bench → report, cached per stage (exit 3: a budget breached)."""
    cfg = BuildConfig(**kw)
    if cfg.dry_run:
        planned, ft, stages = dry_run(cfg)
        report.out.print(dry_run_view(planned, ft, stages, cfg.out or f"builds/{planned.profile}"))
        return
    result = build(cfg)
    report.out.print(summary(result))
    build_gate(result)


@cli.command("compare-methods")
@options(CompareConfig)
def compare_methods_command(**kw) -> None:
    """Full fine-tune vs LoRA vs QLoRA on your data, each at its best rate: task score, memory, time, forgetting."""
    report.out.print(compare_view(compare_methods(CompareConfig(**_keep(CompareConfig, kw)))))


@cli.command("calibrate")
@options(CalibrateConfig)
def calibrate_command(**kw) -> None:
    """Measure plan's memory terms on this machine (the target): runtime-only for GGUF, a few minutes."""
    report.out.print(calibration_view(calibrate(CalibrateConfig(**kw))))


@cli.command("run")
@options(RunConfig)
def run_command(**kw) -> None:
    """Talk to an artifact as it is served: one PROMPT, or an interactive loop (Ctrl-D quits)."""
    run(RunConfig(**kw))


@cli.command("eval-task")
@options(TaskConfig)
@JSON_OPTION
def eval_task_command(as_json: bool, **kw) -> None:
    """Task score of an HF model's greedy answers, by the metric the references call for (or --metric)."""
    cfg = TaskConfig(**kw)
    result = eval_task(resolve_model(cfg.model), cfg.data, cfg.limit, cfg.metric)
    report.print_json(result) if as_json else report.out.print(task_view(result))


def _missing_toolchain(e: Exception) -> BackendError | None:
    """The runtime-only install (`pip install edgeq`) meeting a workstation command: say which extra to install."""
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

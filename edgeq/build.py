"""`edgeq build --profile NAME`: fine-tune → merge → plan → sweep → export → eval → bench → report.

Each stage is cached in OUT/.edgeq/<stage>/ under a key: the sha256 of its settings, its input files
and the keys of the stages before it. A stage whose key matches a finished copy is skipped, so a
rebuild with nothing changed does no work, and a changed profile re-runs from plan on. A stage
works in <stage>.partial/ and becomes <stage>/ by one rename; a build killed at any point starts
the unfinished stage again (the fine-tune resumes from its last checkpoint). One lock per output
directory; free disk is checked before each stage starts.

  finetune  QLoRA adapter on --data                       (finetune.py)
  merge     adapter into the dequantized base, float32    (merge.py)
  plan      storage and peak RSS of every candidate       (plan.py)
  sweep     each candidate that fits: built, its KLD and decode speed measured; the choice
  export    the chosen artifact, with every export gate   (export/)
  eval      fidelity and task accuracy vs the merged model; the base model's task accuracy
  bench     footprint and latency against the profile     (bench.py)
  report    artifact, Modelfile, manifest.json, report.md, candidates.png into OUT
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from edgeq import __version__, report
from edgeq.checks import MAX, Check
from edgeq.errors import BudgetError, UsageError
from edgeq.io import check_free_disk, sha256_file, write_json
from edgeq.spec import (
    BUILD_EXAMPLE_DATA,
    BUILD_EXAMPLE_TEST,
    BUILD_STAGE_RECORD,
    BUILD_STAGES,
    BUILD_STATE_DIR,
    FORMAT_GGUF,
)


@dataclass
class BuildConfig:
    profile: str = field(metadata={"help": "profile name or YAML path"})
    base: str | None = field(default=None, metadata={"help": "HF base model dir; default: embedded SmolLM2-135M"})
    data: str | None = field(default=None, metadata={"help": "training JSONL; default: the example drone data"})
    test_data: str | None = field(
        default=None, metadata={"help": "held-out task JSONL; default: the example's, else a seeded split of --data"}
    )
    out: str | None = field(default=None, metadata={"help": "output directory; default: builds/<profile>"})
    dry_run: bool = field(default=False, metadata={"help": "print the plan and the stages that would run"})
    max_steps: int | None = field(default=None, metadata={"help": "cap the fine-tune's optimizer steps"})
    eval_limit: int | None = field(default=None, metadata={"help": "score only the first N task examples"})
    reps: int = field(default=3, metadata={"help": "bench repetitions (fresh processes)"})
    calibration: str | None = field(default=None, metadata={"help": "edgeq calibrate file; default: the profile's"})
    system_prompt: str | None = field(
        default=None, metadata={"help": "the artifact's default system prompt; default: the training data's; '': base"}
    )
    metric: str | None = field(default=None, metadata={"help": "task metric (json, exact, chrf); default: the data's"})


@dataclass
class Context:
    """What the stages share: resolved inputs, the state directory and each finished stage's result."""

    cfg: BuildConfig
    profile: object
    base: Path
    data: Path
    test_data: Path | None
    out: Path
    state: Path
    calibration: Path  # the plan's memory calibration (plan.select_calibration)
    system: object  # serving.SystemPrompt: the default system prompt the artifact is served with
    holdout: dict | None = None  # no --test-data: how --data was split into training and held-out examples
    hashes: dict = field(default_factory=dict)  # sha256 of the input files (input_hashes)
    keys: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)

    def dir(self, stage: str) -> Path:
        return self.state / stage


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha(path: Path, memo: dict) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so a no-op rebuild does not re-read weights."""
    st = path.stat()
    k = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if k not in memo:
        memo[k] = sha256_file(path)
    return memo[k]


def input_hashes(ctx: Context, memo: dict) -> dict:
    """Every input a stage may read: the whole base folder (weights, config, tokenizer, chat template), the
    data, the profile, the calibration, the library versions and llama.cpp's configuration on this machine."""
    from edgeq.machine import versions
    from edgeq.runtime import llama_config

    base_files = sorted(f for f in ctx.base.iterdir() if f.is_file())
    return {
        "base": {f.name: file_sha(f, memo) for f in base_files},
        "data": file_sha(ctx.data, memo),
        "test_data": file_sha(ctx.test_data, memo) if ctx.test_data else None,
        "profile": _hash({k: v for k, v in ctx.profile.as_dict().items() if k != "source"}),
        "calibration": file_sha(ctx.calibration, memo),
        "training_libraries": _hash([__version__, versions(TRAINING_LIBRARIES)]),
        "runtime_libraries": _hash([__version__, versions(RUNTIME_LIBRARIES), llama_config()]),
    }


TRAINING_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors")
RUNTIME_LIBRARIES = ("llama_cpp", "gguf", "onnxruntime", "onnxruntime_genai", "transformers", "torch")


def stage_settings(ctx: Context) -> dict:
    """Everything each stage's output depends on besides the stages before it."""
    from edgeq.finetune import FinetuneConfig
    from edgeq.merge import MergeConfig

    ft = dataclasses.asdict(FinetuneConfig(data="", out="", max_steps=ctx.cfg.max_steps))
    for k in ("data", "out", "base", "resume", "force"):
        ft.pop(k)
    mg = dataclasses.asdict(MergeConfig(adapter="", out="", system_prompt=ctx.system.text))
    for k in ("adapter", "out", "base", "force"):
        mg.pop(k)
    return {
        "finetune": {"config": ft, "inputs": ["base", "data", "training_libraries"]},
        "merge": {"config": mg, "inputs": []},
        "plan": {"config": {}, "inputs": ["profile", "calibration", "runtime_libraries"]},
        "sweep": {"config": {"imatrix": "training data"}, "inputs": ["data"]},
        "export": {"config": {"imatrix": "training data"}, "inputs": []},
        "eval": {"config": {"limit": ctx.cfg.eval_limit, "metric": ctx.cfg.metric}, "inputs": ["test_data", "base"]},
        "bench": {"config": {"reps": ctx.cfg.reps}, "inputs": []},
        "report": {"config": {}, "inputs": []},
    }


def compute_keys(ctx: Context, hashes: dict) -> dict:
    """Chained keys: a stage's key covers its settings, its inputs and the key of the stage before it."""
    keys, prev = {}, None
    for stage, s in stage_settings(ctx).items():
        keys[stage] = _hash({"stage": stage, "prev": prev, **s, "hashes": {i: hashes[i] for i in s["inputs"]}})
        prev = keys[stage]
    return keys


def cached(ctx: Context, stage: str) -> dict | None:
    """The finished stage's record if its key matches and every file it left is still as it left it."""
    done = ctx.dir(stage) / BUILD_STAGE_RECORD
    if not done.is_file():
        return None
    try:
        record = json.loads(done.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if record.get("key") != ctx.keys[stage] or record.get("files") != stage_files(ctx, stage, record["result"]):
        return None
    return record


def stage_files(ctx: Context, stage: str, result: dict) -> dict:
    """{path: [bytes, mtime_ns]} of what a stage left: its folder, and for the report the files it published in
    OUT. A deleted or edited output (an artifact changed in place) no longer matches, so the stage runs again."""
    files = [f for f in sorted(ctx.dir(stage).rglob("*")) if f.is_file() and f.name != BUILD_STAGE_RECORD]
    files += [ctx.out / name for name in result.get("published", [])]
    out = {}
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:
            continue
        out[str(f.relative_to(ctx.out))] = [st.st_size, st.st_mtime_ns]
    return out


# ---------------------------------------------------------------------------------------------
# the stages: each works in `work` and returns its result (JSON)


def run_finetune(ctx: Context, work: Path) -> dict:
    from edgeq.finetune import FinetuneConfig, finetune, latest_checkpoint

    resume = latest_checkpoint(work) is not None
    return finetune(
        FinetuneConfig(
            data=str(ctx.data),
            out=str(work),
            base=str(ctx.base),
            max_steps=ctx.cfg.max_steps,
            resume=resume,
            force=True,
        )
    )


def run_merge(ctx: Context, work: Path) -> dict:
    from edgeq.merge import MergeConfig, merge

    cfg = MergeConfig(
        adapter=str(ctx.dir("finetune")), out=str(work / "model"), base=str(ctx.base), system_prompt=ctx.system.text
    )
    return merge(cfg)


def merged(ctx: Context) -> Path:
    return ctx.dir("merge") / "model"


def planned_gguf(ctx: Context) -> Path:
    from edgeq.plan import FLOAT_GGUF

    return ctx.dir("plan") / FLOAT_GGUF


def run_plan(ctx: Context, work: Path) -> dict:
    from edgeq.plan import PlanConfig, float_gguf_for, plan

    flt = float_gguf_for(merged(ctx), work) if FORMAT_GGUF in ctx.profile.formats else None
    cfg = PlanConfig(profile=ctx.profile.source, model=str(merged(ctx)), calibration=str(ctx.calibration))
    result = plan(cfg, float_gguf=flt)
    result.pop("error", None)  # the sweep decides with measured quality; its choice is the one that counts
    return result


def _measure_candidate(ctx: Context, row: dict, ref, ids, imatrix, work: Path) -> dict:
    from edgeq.bench import measure_in_child
    from edgeq.evaluate import compare_logits
    from edgeq.export.gguf import quantize_gguf
    from edgeq.export.onnx import OnnxExport, export_onnx
    from edgeq.runtime import artifact_bytes

    fmt, quant = row["format"], row["quant"]
    path = work / (f"{quant}.gguf" if fmt == FORMAT_GGUF else quant)
    if fmt == FORMAT_GGUF:
        quantize_gguf(planned_gguf(ctx), path, quant, imatrix)
    else:
        export_onnx(OnnxExport(model=str(merged(ctx)), out=str(path), quant=quant))
    fidelity = compare_logits(path, ref, ids)
    run = measure_in_child(
        fmt, path, ctx.profile.prompt_tokens, 32, ctx.profile.threads, ctx.profile.max_context_tokens
    )
    size = artifact_bytes(path)
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    return {
        "kld": fidelity["mean_kld"],
        "top1": fidelity["top1_agreement"],
        "decode_tok_s": run["decode_tok_s"],
        "ttft_ms": run["ttft_ms"],
        "peak_rss_mib": run["peak_rss_mib"],
        "storage_mib": size / 2**20,
    }


def run_sweep(ctx: Context, work: Path) -> dict:
    """Build and measure every candidate predicted to fit memory and storage; choose with the measurements."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeq.evaluate import TEXT_TOKENS, fidelity_ids, reference_logits
    from edgeq.export.imatrix import compute_imatrix
    from edgeq.plan import choose, predict

    plan = ctx.results["plan"]
    todo = [r for r in plan["candidates"] if not [x for x in r["reasons"] if x.startswith(("memory", "storage"))]]
    check_free_disk(work, 2 * max([r["storage_mib"] for r in todo] or [0]) * 2**20, "the candidate sweep")
    tok = AutoTokenizer.from_pretrained(merged(ctx))
    model = AutoModelForCausalLM.from_pretrained(merged(ctx), dtype=torch.float32).eval()
    ids = fidelity_ids(tok, TEXT_TOKENS, model.config.max_position_embeddings)
    ref = reference_logits(model, ids)
    del model
    imatrix = None
    if any(r["format"] == FORMAT_GGUF for r in todo):
        imatrix, _ = compute_imatrix(merged(ctx), ctx.data)
    measured = {}
    with report.progress("sweep", len(todo)) as update:
        for i, row in enumerate(todo):
            update(i, f"{row['format']} {row['quant']}")
            measured[f"{row['format']}:{row['quant']}"] = _measure_candidate(ctx, row, ref, ids, imatrix, work)
        update(len(todo), "")
    from edgeq.plan import load_calibration

    cal = load_calibration(ctx.calibration)
    rows = predict(merged(ctx), ctx.profile, plan["ctx"], planned_gguf(ctx), measured, cal)
    chosen = choose(rows, ctx.profile)
    for r in rows:
        r["measured"] = measured.get(f"{r['format']}:{r['quant']}")
    return {"candidates": rows, "chosen": chosen and {"format": chosen["format"], "quant": chosen["quant"]}}


def run_export(ctx: Context, work: Path) -> dict:
    from edgeq.export.gguf import GgufExport, export_gguf
    from edgeq.export.onnx import OnnxExport, export_onnx

    chosen = ctx.results["sweep"]["chosen"]
    name = f"model.{chosen['quant']}" + (".gguf" if chosen["format"] == FORMAT_GGUF else "")
    if chosen["format"] == FORMAT_GGUF:
        result = export_gguf(
            GgufExport(model=str(merged(ctx)), out=str(work / name), quant=chosen["quant"], imatrix_data=str(ctx.data))
        )
        result["imatrix_source"] = str(ctx.data)
    else:
        result = export_onnx(OnnxExport(model=str(merged(ctx)), out=str(work / name), quant=chosen["quant"]))
    result["name"] = name
    return result


def artifact(ctx: Context) -> Path:
    return ctx.dir("export") / ctx.results["export"]["name"]


def run_eval(ctx: Context, work: Path) -> dict:
    """Fidelity of the artifact and its task score as evaluated and as served; the float models' task scores and
    answer NLL; the artifact's agreement with the merged model's answers."""
    from transformers import AutoTokenizer

    from edgeq.evaluate import agreement, evaluate, float_task_score
    from edgeq.task import load_task

    limit, metric = ctx.cfg.eval_limit, ctx.cfg.metric
    task = load_task(ctx.test_data, limit, metric)
    result = {"artifact": evaluate(artifact(ctx), merged(ctx), ctx.test_data, limit, served=True, metric=metric)}
    result["merged"] = float_task_score(merged(ctx), task)
    result["base"] = float_task_score(ctx.base, task)
    tok = AutoTokenizer.from_pretrained(merged(ctx))
    result["agreement"] = agreement(result["artifact"]["task"]["answers"], result["merged"]["answers"], tok)
    return result


def run_bench(ctx: Context, work: Path) -> dict:
    from edgeq.bench import BenchConfig, bench

    out = work / "bench.json"
    with contextlib.suppress(BudgetError):  # a breach is a result: the report shows it, the build exits 3
        bench(
            BenchConfig(str(artifact(ctx)), profile=ctx.profile.source, reps=ctx.cfg.reps, output="json", out=str(out))
        )
    return json.loads(out.read_text())


def quality_checks(ctx: Context) -> list[Check]:
    """The profile's quality budgets, on the artifact as evaluated (KLD) and as served (task score)."""
    ev, p = ctx.results["eval"], ctx.profile
    checks = [Check("kld", "nats", ev["artifact"]["text"]["mean_kld"], p.max_mean_kld, MAX)]
    if "merged" in ev and "task_served" in ev["artifact"]:  # the gate judges the artifact as it is served
        drop = ev["merged"]["score"] - ev["artifact"]["task_served"]["score"]
        checks.append(Check("task_drop", "points", drop, p.max_task_accuracy_drop_points, MAX))
    return checks


def run_report(ctx: Context, work: Path) -> dict:
    from edgeq.buildreport import write_outputs

    bench_checks = [Check.from_dict(c) for c in ctx.results["bench"]["checks"]]
    return write_outputs(ctx, artifact(ctx), work, bench_checks, quality_checks(ctx))


STAGES = {
    "finetune": run_finetune,
    "merge": run_merge,
    "plan": run_plan,
    "sweep": run_sweep,
    "export": run_export,
    "eval": run_eval,
    "bench": run_bench,
    "report": run_report,
}
assert tuple(STAGES) == BUILD_STAGES


def disk_need(ctx: Context, stage: str) -> int:
    """Bytes a stage may write, checked before it starts (the exports check their own too)."""
    from edgeq.basemodel import weights_bytes

    w = weights_bytes(ctx.base)
    return {"finetune": 64 << 20, "merge": 2 * w, "plan": w, "export": 2 * w, "report": w}.get(stage, 0)


# ---------------------------------------------------------------------------------------------
# the pipeline


@contextlib.contextmanager
def build_lock(state: Path):
    """One build per output directory; the kernel drops the lock if the holder dies (kill -9)."""
    state.mkdir(parents=True, exist_ok=True)
    f = open(state / "lock", "a+")  # noqa: SIM115 - held for the whole build
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UsageError(
            f"another edgeq build ({holder}) is writing to this output directory",
            str(state.parent),
            "wait for it to finish, or pass a different --out",
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def run_stage(ctx: Context, stage: str) -> dict:
    final, work = ctx.dir(stage), ctx.dir(f"{stage}.partial")
    check_free_disk(ctx.state, disk_need(ctx, stage), f"the {stage} stage")
    key_file = work / ".key"
    # a partial from a killed run: only the fine-tune continues (from its checkpoints), and only its own
    if work.exists() and not (stage == "finetune" and key_file.is_file() and key_file.read_text() == ctx.keys[stage]):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    key_file.write_text(ctx.keys[stage])
    t0 = time.time()
    result = STAGES[stage](ctx, work)
    seconds = time.time() - t0
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)  # renames keep sizes and mtimes: the file list below holds for `final`
    record = {"key": ctx.keys[stage], "seconds": seconds, "result": result, "files": stage_files(ctx, stage, result)}
    write_json(final / BUILD_STAGE_RECORD, record)
    return record


def resolve(cfg: BuildConfig) -> Context:
    from edgeq.basemodel import resolve_model
    from edgeq.data import read_jsonl
    from edgeq.plan import select_calibration
    from edgeq.profiles import load_profile
    from edgeq.serving import from_training

    problems = []
    profile = load_profile(cfg.profile)
    package = Path(str(files("edgeq")))  # the example task ships as package data
    data = Path(cfg.data) if cfg.data else package / BUILD_EXAMPLE_DATA
    test = Path(cfg.test_data) if cfg.test_data else (package / BUILD_EXAMPLE_TEST if not cfg.data else None)
    for what, p in (("--data", data), ("--test-data", test)):
        if p is not None and not p.is_file():
            problems.append(f"{what} {p}: no such file")
    if cfg.reps < 1:
        problems.append(f"--reps {cfg.reps}: need at least 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        problems.append(f"--max-steps {cfg.max_steps}: need at least 1")
    if problems:
        raise UsageError("; ".join(problems), None, "fix the options above and run again")
    out = Path(cfg.out or Path("builds") / profile.name)
    base = resolve_model(cfg.base)
    system = from_training(read_jsonl(data), cfg.system_prompt)
    if FORMAT_GGUF in profile.formats:
        from edgeq.buildreport import check_modelfile

        check_modelfile(base, profile, system)
    calibration, _, warnings = select_calibration(cfg.calibration, profile)
    for w in warnings:
        report.err.print(f"[yellow]note:[/] {w}")
    return Context(cfg, profile, base, data, test, out, out / BUILD_STATE_DIR, calibration, system)


def hold_out(ctx: Context, where: Path) -> None:
    """No --test-data: a seeded split of --data; the fine-tune trains on the rest, the task is scored on it."""
    from edgeq.data import HOLDOUT_SEED, split_holdout

    where.mkdir(parents=True, exist_ok=True)
    train, test, n_train, n_test = split_holdout(ctx.data, where)
    ctx.holdout = {"source": str(ctx.data), "train": n_train, "held_out": n_test, "seed": HOLDOUT_SEED}
    report.err.print(
        f"[yellow]note:[/] no --test-data: {n_test} of {n_train + n_test} examples of {ctx.data} held out "
        f"(seed {HOLDOUT_SEED}) for the task score; the fine-tune trains on the other {n_train}"
    )
    ctx.data, ctx.test_data = train, test


def dry_run(ctx: Context) -> dict:
    """What a build would do, writing nothing: the plan predicted from the base model (same shapes,
    prior quality) and each stage's state."""
    from edgeq.buildreport import dry_run_view
    from edgeq.plan import PlanConfig, plan

    predicted = plan(PlanConfig(profile=ctx.profile.source, model=str(ctx.base), calibration=str(ctx.calibration)))
    predicted.pop("error", None)
    stages = {s: "cached" if cached(ctx, s) else "would run" for s in ctx.keys}
    dry_run_view(predicted, stages, ctx.out)
    return {"plan": predicted, "stages": stages}


def build(cfg: BuildConfig) -> dict:
    from edgeq.buildreport import StageView, summary

    ctx = resolve(cfg)
    with contextlib.ExitStack() as scratch:
        if ctx.test_data is None:  # dry run: the split goes to a scratch folder, nothing into OUT
            where = Path(scratch.enter_context(tempfile.TemporaryDirectory())) if cfg.dry_run else ctx.state / "split"
            hold_out(ctx, where)
        from edgeq.task import load_task

        load_task(ctx.test_data, cfg.eval_limit, cfg.metric)  # bad task data fails now, not after the fine-tune
        memo_path = ctx.state / "sha-memo.json"
        memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
        ctx.hashes = input_hashes(ctx, memo)
        ctx.keys = compute_keys(ctx, ctx.hashes)
        if cfg.dry_run:
            return dry_run(ctx)
    with build_lock(ctx.state):
        write_json(memo_path, memo)
        view = StageView(BUILD_STAGES)
        with view.live():
            for stage in BUILD_STAGES:
                record = cached(ctx, stage)
                if record is not None:
                    view.set(stage, "cached", record["seconds"])
                else:
                    view.set(stage, "running")
                    try:
                        record = run_stage(ctx, stage)
                    except BaseException:
                        view.set(stage, "failed")
                        raise
                    view.set(stage, "done", record["seconds"])
                ctx.results[stage] = record["result"]
                if stage == "sweep" and ctx.results["sweep"]["chosen"] is None:
                    from edgeq.plan import no_fit_error

                    raise no_fit_error(ctx.results["sweep"]["candidates"], ctx.profile, ctx.results["plan"]["ctx"])
    final = ctx.results["report"]
    report.out.print(summary(ctx, view))
    breaches = final["breaches"]
    if breaches:
        raise BudgetError(
            "; ".join(breaches), str(ctx.out / "report.md"), "see the report; relax the profile or the model"
        )
    return final

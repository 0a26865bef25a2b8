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
from edgeq.basemodel import MODEL_HELP, load_tokenizer, resolve_model, weights_bytes
from edgeq.bench import BenchConfig, bench
from edgeq.buildreport import StageView, check_modelfile, write_outputs
from edgeq.calibration import CALIBRATION_HELP, select_calibration
from edgeq.checks import MAX, Check
from edgeq.config import setting
from edgeq.data import HOLDOUT_SEED, read_jsonl, split_holdout
from edgeq.errors import BudgetError, UsageError
from edgeq.evaluate import agreement, evaluate, float_task_score
from edgeq.export.gguf import GgufExport, export_gguf, write_f16_gguf
from edgeq.export.imatrix import compute_imatrix, load_imatrix, save_imatrix
from edgeq.export.onnx import export_onnx
from edgeq.finetune import LR_HELP, METHOD_HELP, FinetuneConfig, finetune, latest_checkpoint
from edgeq.finetune import plan as plan_finetune
from edgeq.io import atomic_path, check_free_disk, check_not_input, parse_json, sha256_file, write_json
from edgeq.machine import versions
from edgeq.merge import MergeConfig, adopt, merge
from edgeq.plan import PlanConfig, make_plan, no_fit_error
from edgeq.profiles import PROFILE_HELP, load_profile
from edgeq.records import (
    BenchResult,
    BuildInputs,
    BuildResult,
    EvalResult,
    ExportResult,
    FinetuneResult,
    MergeResult,
    Plan,
    Published,
    Score,
    StageRecord,
)
from edgeq.runtime import llama_config
from edgeq.serving import from_training
from edgeq.spec import (
    BUILD_EXAMPLE_DATA,
    BUILD_EXAMPLE_TEST,
    BUILD_FLOAT_GGUF,
    BUILD_IMATRIX,
    BUILD_REPORT,
    BUILD_SCORES_DIR,
    BUILD_STAGE_RECORD,
    BUILD_STAGES,
    BUILD_STATE_DIR,
    FINETUNE_LR,
    FINETUNE_METHODS,
    FORMAT_GGUF,
    SCORE_SCHEMA,
    SHIPPED_EXAMPLES,
    SWEEP_MODES,
    TASK_METRICS,
)
from edgeq.sweep import SweepInputs, onnx_export, sweep
from edgeq.task import METRIC_HELP, load_task
from edgeq.trainplan import FinetunePrediction


@dataclass
class BuildConfig:
    profile: str = setting(help=PROFILE_HELP)
    base: str | None = setting(None, MODEL_HELP)
    data: str | None = setting(None, "training JSONL [default: the example drone data]")
    test_data: str | None = setting(
        None, "held-out task JSONL [default: the example's with the example data, else a seeded 10 % of --data]"
    )
    out: str | None = setting(None, "output directory [default: builds/PROFILE]")
    dry_run: bool = setting(False, "print the plan and the stages that would run; write nothing")
    max_steps: int | None = setting(None, "cap the fine-tune's optimizer steps", minimum=1)
    method: str = setting(FINETUNE_METHODS[0], METHOD_HELP, choices=FINETUNE_METHODS)
    lr: float | None = setting(None, "the fine-tune's " + LR_HELP)
    seed: int = setting(0, "the fine-tune's seed: data order, adapter init, dropout")
    eval_limit: int | None = setting(None, "score only the first N held-out task examples", minimum=1)
    reps: int = setting(3, "bench repetitions (fresh processes)", minimum=1)
    calibration: str | None = setting(None, CALIBRATION_HELP)
    metric: str | None = setting(None, METRIC_HELP, choices=TASK_METRICS)
    system_prompt: str | None = setting(
        None,
        "the artifact's default system prompt [default: the one that opens most training conversations; '' keeps "
        "the base template's]",
    )
    sweep: str = setting(
        SWEEP_MODES[0],
        "first-fit: build candidates in order of expected quality, stop at the first that meets every budget; "
        "all: build and measure every candidate that may fit (full table and plot)",
        choices=SWEEP_MODES,
    )


@dataclass
class Job:
    """What the stages of one build share: resolved inputs, the state directory and each finished stage's record."""

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
    memo: dict = field(default_factory=dict)  # file_sha's memo, saved once the lock is held
    results: dict = field(default_factory=dict)  # stage → its record (STAGES: FinetuneResult, …, Published)
    seconds: dict = field(default_factory=dict)  # stage → (seconds, "done" | "cached")

    def dir(self, stage: str) -> Path:
        return self.state / stage


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha(path: Path, memo: dict) -> str:
    """sha256 of a file, remembered by (path, size, mtime, ctime) so a no-op rebuild does not re-read weights.
    ctime too: a same-size edit in place whose mtime was put back (cp -p, rsync -t, touch -r) still changes it,
    and no user call can set it."""
    st = path.stat()
    k = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    if k not in memo:
        memo[k] = sha256_file(path)
    return memo[k]


def input_hashes(job: Job, memo: dict) -> dict:
    """Every input a stage may read: the whole base folder (weights, config, tokenizer, chat template), the
    data, the profile, the calibration, the library versions and llama.cpp's configuration on this machine."""

    base_files = sorted(f for f in job.base.rglob("*") if f.is_file())  # templates may sit in a subfolder
    return {
        "base": {str(f.relative_to(job.base)): file_sha(f, memo) for f in base_files},
        "data": file_sha(job.data, memo),
        "test_data": file_sha(job.test_data, memo) if job.test_data else None,
        "profile": _hash({k: v for k, v in job.profile.as_dict().items() if k != "source"}),
        "calibration": file_sha(job.calibration, memo),
        "training_libraries": _hash([__version__, versions(TRAINING_LIBRARIES)]),
        "runtime_libraries": _hash([__version__, versions(RUNTIME_LIBRARIES), llama_config()]),
    }


TRAINING_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors")
RUNTIME_LIBRARIES = ("llama_cpp", "gguf", "onnxruntime", "onnxruntime_genai", "transformers", "torch")


def stage_settings(job: Job) -> dict:
    """Everything each stage's output depends on besides the stages before it."""

    ft = dataclasses.asdict(FinetuneConfig(data="", out="", **finetune_settings(job.cfg)))
    for k in ("data", "out", "base", "resume", "force", "dry_run"):
        ft.pop(k)
    mg = dataclasses.asdict(MergeConfig(adapter="", out="", system_prompt=job.system.text))
    for k in ("adapter", "out", "base", "force"):
        mg.pop(k)
    return {
        "finetune": {"config": ft, "inputs": ["base", "data", "training_libraries"]},
        "merge": {"config": mg, "inputs": []},
        "plan": {
            "config": {"imatrix": "the training data's, where a mixed recipe is priced", "mixed": "where it binds"},
            "inputs": ["profile", "calibration", "runtime_libraries", "data"],
        },
        "sweep": {"config": {"mode": job.cfg.sweep}, "inputs": []},
        "export": {"config": {"imatrix": "the training data's, for types that weigh by one"}, "inputs": []},
        "eval": {"config": {"limit": job.cfg.eval_limit, "metric": job.cfg.metric}, "inputs": ["test_data", "base"]},
        "bench": {"config": {"reps": job.cfg.reps}, "inputs": []},
        "report": {"config": {}, "inputs": []},
    }


def compute_keys(job: Job, hashes: dict) -> dict:
    """Chained keys: a stage's key covers its settings, its inputs and the key of the stage before it."""
    keys, prev = {}, None
    for stage, s in stage_settings(job).items():
        keys[stage] = _hash({"stage": stage, "prev": prev, **s, "hashes": {i: hashes[i] for i in s["inputs"]}})
        prev = keys[stage]
    return keys


def cached(job: Job, stage: str) -> tuple[StageRecord, object] | None:
    """The finished stage's record and its result, if its key matches, it reads back as its record, and every file
    it left is still as it left it. A record cut short, of another schema or edited by hand is not a cache hit: the
    stage runs again."""
    done = job.dir(stage) / BUILD_STAGE_RECORD
    if not done.is_file():
        return None
    try:
        record = StageRecord.from_dict(json.loads(done.read_bytes()))
        result = loaded(job, stage, record.result)
        if record.key != job.keys[stage] or record.files != stage_files(job, stage, result):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError):
        return None
    return record, result


def stage_files(job: Job, stage: str, result) -> dict:
    """{path: [bytes, mtime_ns]} of what a stage left: its folder, and for the report the files it published in
    OUT. A deleted or edited output (an artifact changed in place) no longer matches, so the stage runs again."""
    files = [f for f in sorted(job.dir(stage).rglob("*")) if f.is_file() and f.name != BUILD_STAGE_RECORD]
    files += [job.out / name for name in (result.names if isinstance(result, Published) else ())]
    out = {}
    for f in files:
        try:
            st = f.stat()
        except FileNotFoundError:
            continue
        out[str(f.relative_to(job.out))] = [st.st_size, st.st_mtime_ns]
    return out


# ---------------------------------------------------------------------------------------------
# the stages: each works in `work` and returns its record (records.py), which the next stages read


def finetune_settings(cfg: BuildConfig) -> dict:
    """What the build sets of the fine-tune's config; the rest is its defaults."""
    lr = cfg.lr or FINETUNE_LR[cfg.method]
    return {"max_steps": cfg.max_steps, "method": cfg.method, "lr": lr, "seed": cfg.seed}


def run_finetune(job: Job, work: Path) -> FinetuneResult:

    resume = latest_checkpoint(work) is not None
    return finetune(
        FinetuneConfig(
            data=str(job.data),
            out=str(work),
            base=str(job.base),
            **finetune_settings(job.cfg),
            resume=resume,
            force=True,
        )
    )


def run_merge(job: Job, work: Path) -> MergeResult:
    """Fold the adapter into the base; a full fine-tune's model has nothing to fold and is taken as it is."""
    ft = job.results["finetune"]
    if ft.method == "full":
        return adopt(Path(ft.path) / ft.output, work / "model", job.system.text)
    adapter = ft.path
    return merge(
        MergeConfig(adapter=adapter, out=str(work / "model"), base=str(job.base), system_prompt=job.system.text)
    )


def merged(job: Job) -> Path:
    return Path(job.results["merge"].path)


def planned_gguf(job: Job) -> Path:
    return job.dir("plan") / BUILD_FLOAT_GGUF


def importance(job: Job) -> Path:
    """The training data's importance matrix on the merged model, computed the first time a stage asks (a mixed
    recipe's pricing, or a candidate whose quantizer weighs by one: never for Q8_0 or the float types) and kept
    beside the stages' folders, named by the merge it was computed on. A new merge's matrix replaces the old."""
    path = job.state / BUILD_IMATRIX.format(key=job.keys["merge"][:16])
    if not path.is_file():
        for old in job.state.glob(BUILD_IMATRIX.format(key="*")):
            old.unlink()
        save_imatrix(*compute_imatrix(merged(job), job.data), path)
    return path


def run_plan(job: Job, work: Path) -> Plan:
    """Every candidate predicted from the merged model; a plan with no fitting candidate is a result here (the
    sweep decides with measured quality, and reports no fit itself)."""
    flt = None
    if FORMAT_GGUF in job.profile.formats:  # what the quantizer plans from, and the sweep and export quantize
        flt = work / BUILD_FLOAT_GGUF
        with atomic_path(flt) as tmp:
            write_f16_gguf(merged(job), tmp)
    cfg = PlanConfig(
        profile=job.profile.source, model=str(merged(job)), calibration=str(job.calibration), data=str(job.data)
    )
    return make_plan(cfg, float_gguf=flt, imatrix=lambda: load_imatrix(importance(job))[0])


def sweep_inputs(job: Job) -> SweepInputs:
    return SweepInputs(merged(job), planned_gguf(job), lambda: importance(job), job.profile, job.cfg.sweep)


def run_sweep(job: Job, work: Path) -> Plan:
    return sweep(job.results["plan"], sweep_inputs(job), work)


def run_export(job: Job, work: Path) -> ExportResult:
    c = job.results["sweep"].chosen
    name = f"model.{c.quant}" + ("-mixed" if c.recipe else "") + (".gguf" if c.fmt == FORMAT_GGUF else "")
    out, imatrix = str(work / name), importance(job) if c.uses_imatrix else None
    if c.fmt == FORMAT_GGUF:
        recipe = dict(c.recipe) or None
        matrix = str(imatrix) if imatrix else None
        r = export_gguf(GgufExport(out=out, model=str(merged(job)), quant=c.quant, imatrix=matrix, recipe=recipe))
    else:
        r = export_onnx(onnx_export(c, merged(job), imatrix, Path(out)))
    return dataclasses.replace(r, imatrix_source=str(job.data) if imatrix else None)


def artifact(job: Job) -> Path:
    return Path(job.results["export"].path)


def run_eval(job: Job, work: Path) -> EvalResult:
    """Fidelity of the artifact and its task score as evaluated and as served; the float models' task scores and
    answer NLL; the artifact's agreement with the merged model's answers."""

    limit, metric = job.cfg.eval_limit, job.cfg.metric
    task = load_task(job.test_data, limit, metric)
    art = evaluate(artifact(job), merged(job), job.test_data, limit, served=True, metric=metric)
    flt = planned_gguf(job) if planned_gguf(job).is_file() else None  # a GGUF profile's: llama.cpp scores both
    merged_score = float_score(job, "merged", merged(job), task, flt)
    base_score = float_score(job, "base", job.base, task, work / BUILD_FLOAT_GGUF if flt else None)
    tok = load_tokenizer(merged(job))
    return EvalResult(
        text=art.text,
        task_text=art.task_text,
        artifact=art.task,
        served=art.served,
        merged=merged_score,
        base=base_score,
        agreement=agreement(list(art.task.answers), list(merged_score.answers), tok),
    )


def float_score(job: Job, which: str, model_dir: Path, task, gguf: Path | None) -> Score:
    """A float model's task score, kept in OUT/.edgeq/scores/ under the hash of what it depends on: a minute or
    more of generation on a CPU that a rebuild need not repeat. The base's serves every fine-tune and profile of one
    base and held-out set; the merged model's every profile of one fine-tune (the merge key covers it). With
    `gguf`, scored by llama.cpp on the model's F16 GGUF (written there first if absent, removed after)."""

    model = {"merged": job.keys["merge"], "base": job.hashes["base"]}[which]
    key = _hash(
        {
            "model": model,
            "test_data": job.hashes["test_data"],
            "limit": job.cfg.eval_limit,
            "metric": job.cfg.metric,
            "libraries": job.hashes["runtime_libraries" if gguf else "training_libraries"],  # what scores it
            "scored_by": "llama.cpp F16" if gguf else "transformers fp32",
        }
    )
    path = job.state / BUILD_SCORES_DIR / f"{which}-{key}.json"
    try:
        kept = json.loads(path.read_text())
        if kept.get("schema") != SCORE_SCHEMA:
            raise ValueError(f"schema {kept.get('schema')!r}")
        score = Score.from_dict({k: v for k, v in kept.items() if k != "schema"})
        report.err.print(f"  {which} model's task score: kept from an earlier build ({path.name})")
        return score
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # absent, unreadable or older: scored again
        pass
    written = gguf is not None and not gguf.is_file()
    if written:
        write_f16_gguf(model_dir, gguf)
    try:
        score = float_task_score(model_dir, task, gguf)
    finally:
        if written:
            gguf.unlink()
    path.parent.mkdir(exist_ok=True)
    write_json(path, {"schema": SCORE_SCHEMA, **score.as_dict()})
    return score


def run_bench(job: Job, work: Path) -> BenchResult:
    """A breach is a result here: the report shows it and gate() makes the build exit 3."""

    return bench(BenchConfig(str(artifact(job)), profile=job.profile.source, reps=job.cfg.reps))


def quality_checks(job: Job) -> list[Check]:
    """The profile's quality budgets, on the artifact as evaluated (KLD) and as served (task score)."""
    ev, p = job.results["eval"], job.profile
    drop = ev.merged.score - ev.served.score  # the gate judges the artifact as it is served
    return [
        Check("kld", "nats", ev.text.mean_kld, p.max_mean_kld, MAX),
        Check("task_drop", "points", drop, p.max_task_accuracy_drop_points, MAX),
    ]


def assemble(job: Job) -> BuildResult:
    """The build as its stages' records: what the report stage renders and build() returns."""
    r, hashes = job.results, job.hashes
    inputs = BuildInputs(
        base=str(job.base),
        base_sha256=hashes["base"],
        data=str(job.data),
        data_sha256=hashes["data"],
        test_data=job.test_data and str(job.test_data),
        test_data_sha256=hashes["test_data"],
        holdout=job.holdout,
    )
    return BuildResult(
        out=str(job.out),
        profile=job.profile,
        inputs=inputs,
        keys=dict(job.keys),
        system=job.system,
        sweep_mode=job.cfg.sweep,
        finetune=r["finetune"],
        merge=r["merge"],
        plan=r["sweep"],
        export=r["export"],
        eval=r["eval"],
        bench=r["bench"],
        quality=tuple(quality_checks(job)),
    )


def run_report(job: Job, work: Path) -> Published:
    """Publish into OUT; what the last report published there and this one does not (an artifact of another type,
    a Modelfile beside what is now an ONNX artifact) is removed: OUT never shows a stale artifact beside the build
    that replaced it."""
    before = published_before(job)
    names = tuple(write_outputs(assemble(job)))
    for name in sorted(set(before) - set(names)):
        stale = job.out / name
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        elif stale.is_file() or stale.is_symlink():
            stale.unlink()
    return Published(names)


def published_before(job: Job) -> tuple[str, ...]:
    """The names the previous report stage published into OUT: plain names only (a record edited to name a path
    elsewhere names nothing)."""
    try:
        record = StageRecord.from_dict(json.loads((job.dir("report") / BUILD_STAGE_RECORD).read_bytes()))
        names = Published.from_dict(record.result).names
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return ()
    return tuple(n for n in names if isinstance(n, str) and n not in ("", ".", "..") and Path(n).name == n)


# stage → (what runs it, the record it returns and its stage.json reads back as)
STAGES = {
    "finetune": (run_finetune, FinetuneResult),
    "merge": (run_merge, MergeResult),
    "plan": (run_plan, Plan),
    "sweep": (run_sweep, Plan),
    "export": (run_export, ExportResult),
    "eval": (run_eval, EvalResult),
    "bench": (run_bench, BenchResult),
    "report": (run_report, Published),
}
PLACED = (FinetuneResult, MergeResult, ExportResult)  # records that name what their stage wrote, by its path
assert tuple(STAGES) == BUILD_STAGES


def disk_need(job: Job, stage: str) -> int:
    """Bytes a stage may write, checked before it starts (the exports check their own too)."""

    w = weights_bytes(job.base)
    sizes = {"finetune": 64 << 20, "merge": 2 * w, "plan": w, "export": 2 * w, "eval": w, "report": w}  # eval: base F16
    return sizes.get(stage, 0)


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


def stored(job: Job, result) -> dict:
    """A stage's record as its stage.json keeps it: the path it names relative to the state folder, so a build
    folder that was moved, or is reached from another directory, still finds what its stages wrote."""
    if isinstance(result, PLACED):
        result = dataclasses.replace(result, path=str(Path(result.path).resolve().relative_to(job.state.resolve())))
    return result.as_dict()


def loaded(job: Job, stage: str, d: dict):
    """stored()'s inverse: the stage's record, its path inside this build's state folder."""
    result = STAGES[stage][1].from_dict(d)
    if isinstance(result, PLACED):
        inside = Path(result.path)
        if inside.is_absolute() or ".." in inside.parts:  # a record edited by hand: not this build's
            raise ValueError(f"{stage} record's path {result.path!r} is not inside the build folder")
        result = dataclasses.replace(result, path=str(job.state / inside))
    return result


def run_stage(job: Job, stage: str) -> tuple[StageRecord, object]:
    final, work = job.dir(stage), job.dir(f"{stage}.partial")
    check_free_disk(job.state, disk_need(job, stage), f"the {stage} stage")
    key_file = work / ".key"
    # a partial from a killed run: only the fine-tune continues (from its checkpoints), and only its own
    if work.exists() and not (stage == "finetune" and key_file.is_file() and key_file.read_text() == job.keys[stage]):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    key_file.write_text(job.keys[stage])
    t0 = time.time()
    result = STAGES[stage][0](job, work)
    seconds = time.time() - t0
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)  # renames keep sizes and mtimes: the file list below holds for `final`
    if isinstance(result, PLACED):  # what the stage wrote into `work` is now in `final`
        inside = Path(result.path).resolve().relative_to(work.resolve())
        result = dataclasses.replace(result, path=str(final / inside))
    record = StageRecord(job.keys[stage], seconds, stored(job, result), stage_files(job, stage, result))
    write_json(final / BUILD_STAGE_RECORD, record.as_dict())
    return record, result


def resolve(cfg: BuildConfig) -> Job:

    problems = []
    profile = load_profile(cfg.profile)
    package = Path(str(files(SHIPPED_EXAMPLES)))  # the example task ships as package data
    data = Path(cfg.data) if cfg.data else package / BUILD_EXAMPLE_DATA
    test = Path(cfg.test_data) if cfg.test_data else (package / BUILD_EXAMPLE_TEST if not cfg.data else None)
    for what, p in (("--data", data), ("--test-data", test)):
        if p is not None and not p.is_file():
            problems.append(f"{what} {p}: no such file")
    if cfg.reps < 1:
        problems.append(f"--reps {cfg.reps}: need at least 1")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        problems.append(f"--max-steps {cfg.max_steps}: need at least 1")
    if cfg.sweep not in SWEEP_MODES:
        problems.append(f"--sweep {cfg.sweep!r}: expected one of {', '.join(SWEEP_MODES)}")
    if cfg.method not in FINETUNE_METHODS:
        problems.append(f"--method {cfg.method!r}: expected one of {', '.join(FINETUNE_METHODS)}")
    if cfg.lr is not None and not 0 < cfg.lr < 1:  # also refuses nan
        problems.append(f"--lr {cfg.lr}: must be in (0, 1)")
    if problems:
        raise UsageError("; ".join(problems), None, "fix the options above and run again")
    out = Path(cfg.out or Path("builds") / profile.name)
    base = resolve_model(cfg.base)
    system = from_training(read_jsonl(data), cfg.system_prompt)
    calibration, _, warnings = select_calibration(cfg.calibration, profile)
    for w in warnings:
        report.err.print(f"[yellow]note:[/] {w}")
    return Job(cfg, profile, base, data, test, out, out / BUILD_STATE_DIR, calibration, system)


def hold_out(job: Job, where: Path) -> None:
    """No --test-data: a seeded split of --data; the fine-tune trains on the rest, the task is scored on it."""

    where.mkdir(parents=True, exist_ok=True)
    train, test, n_train, n_test = split_holdout(job.data, where)
    job.holdout = {"source": str(job.data), "train": n_train, "held_out": n_test, "seed": HOLDOUT_SEED}
    report.err.print(
        f"[yellow]note:[/] no --test-data: {n_test} of {n_train + n_test} examples of {job.data} held out "
        f"(seed {HOLDOUT_SEED}) for the task score; the fine-tune trains on the other {n_train}"
    )
    job.data, job.test_data = train, test


def claim_build_dir(job: Job) -> None:
    """A build writes into OUT only where OUT is new, empty, or a build folder edgeq made (its state folder is
    there), and never where OUT is, holds or lies inside an input."""
    profile = Path(job.profile.source)
    inputs = [job.cfg.base, job.data, job.test_data, job.calibration, profile if profile.is_file() else None]
    check_not_input(job.out, inputs)
    own = (job.out / BUILD_STATE_DIR).is_dir()
    if job.out.exists() and not own and (not job.out.is_dir() or any(job.out.iterdir())):
        raise UsageError(
            f"not an edgeq build folder (no {BUILD_STATE_DIR}/ inside): a build writes only into its own folder",
            str(job.out),
            "choose a new or empty --out",
        )


def read_memo(path: Path) -> dict:
    """file_sha's memo: a file cut short or edited by hand is dropped (the hashes are computed again)."""
    try:
        memo = parse_json(path.read_bytes()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    ok = isinstance(memo, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in memo.items())
    return memo if ok else {}


@contextlib.contextmanager
def prepared(cfg: BuildConfig):
    """The job with its inputs resolved and hashed and its stage keys computed. Task data is read now, so bad
    data fails before the fine-tune. A dry run's held-out split goes to a scratch folder, nothing into OUT."""

    job = resolve(cfg)
    new_out = not cfg.dry_run and not job.out.exists()
    with contextlib.ExitStack() as scratch:
        try:
            if not cfg.dry_run:  # nothing is written into OUT before its lock is held
                claim_build_dir(job)
                scratch.enter_context(build_lock(job.state))
            if job.test_data is None:
                dry = cfg.dry_run
                where = Path(scratch.enter_context(tempfile.TemporaryDirectory())) if dry else job.state / "split"
                hold_out(job, where)
            load_task(job.test_data, cfg.eval_limit, cfg.metric)
            memo = read_memo(job.state / "sha-memo.json")
            job.hashes = input_hashes(job, memo)
            job.keys = compute_keys(job, job.hashes)
            job.memo = memo
            # before any stage runs (a Modelfile that cannot be written fails now, not after the fine-tune); a
            # build with every stage cached writes nothing, and skips the seconds of importing a tokenizer library
            if FORMAT_GGUF in job.profile.formats and any(cached(job, s) is None for s in job.keys):
                check_modelfile(job.base, job.profile, job.system)
        except BaseException:
            if new_out:  # refused before any stage: the folder this run made (its lock, its split) goes again
                shutil.rmtree(job.out, ignore_errors=True)
            raise
        yield job


def dry_run(cfg: BuildConfig) -> tuple[Plan, FinetunePrediction, dict[str, str]]:
    """What a build would do, writing nothing: the fine-tune's cost on a CPU, the plan predicted from the base
    model (same shapes, prior quality; None-chosen where nothing fits) and each stage's state."""

    with prepared(cfg) as job:
        ft = plan_finetune(FinetuneConfig(data=str(job.data), out="", base=str(job.base), **finetune_settings(cfg)))
        cfg = PlanConfig(profile=job.profile.source, model=str(job.base), calibration=str(job.calibration))
        planned = make_plan(cfg, write_f16_gguf)
        return planned, ft, {s: "cached" if cached(job, s) else "would run" for s in job.keys}


def build(cfg: BuildConfig) -> BuildResult:
    """Every stage, cached ones skipped; the build's result with its checks (gate() turns breaches into exit 3).
    No candidate fitting at the sweep raises NoFitError, with previous outputs left as they were."""

    with prepared(cfg) as job:
        write_json(job.state / "sha-memo.json", job.memo)
        view = StageView(BUILD_STAGES)
        with view.live():
            for stage in BUILD_STAGES:
                done = cached(job, stage)
                if done is not None:
                    view.set(stage, "cached", done[0].seconds)
                else:
                    view.set(stage, "running")
                    try:
                        done = run_stage(job, stage)
                    except BaseException:
                        view.set(stage, "failed")
                        raise
                    view.set(stage, "done", done[0].seconds)
                record, job.results[stage] = done
                job.seconds[stage] = (record.seconds, view.rows[stage]["state"])
                if stage == "sweep" and job.results["sweep"].chosen is None:
                    sweep = job.results["sweep"]
                    raise no_fit_error(list(sweep.rows), job.profile, sweep.n_ctx)
    published = job.results["report"].names
    return dataclasses.replace(assemble(job), published=published, stages=dict(job.seconds))


def gate(result: BuildResult) -> None:
    """The build's verdict: a breached budget is exit 3, pointing at the report that shows it."""
    if result.breaches:
        raise BudgetError(
            "; ".join(result.breaches),
            str(Path(result.out) / BUILD_REPORT),
            "see the report; relax the profile or the model",
        )

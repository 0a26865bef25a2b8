"""What moves between plan, the build's stages and its report, typed.

A `Candidate` is what could be built (format + base quant type + per-tensor recipe); plan gives it
a `Prediction`, the sweep a `Measurement`; a `Row` is one candidate with both and the reasons it
does not fit; a `Plan` is every row and the choice. Each stage returns its own record: finetune a
`FinetuneResult`, merge a `MergeResult`, the exporters an `ExportResult`, eval an `Evaluation` (the
build's eval stage an `EvalResult`), bench a `BenchResult`; `build()` hands them on as they are
and returns a `BuildResult`, which is all the build's report renders.

Every record is frozen and reads and writes the JSON it is stored as (stage records under
OUT/.edgeq/, `edgeq plan --json`, `edgeq bench --output json`), so a cached stage comes back as
the same type; a record cut short or of another schema does not read back.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from edgeq.checks import Check
from edgeq.profiles import Profile
from edgeq.serving import SystemPrompt
from edgeq.spec import BENCH_SCHEMA, FORMAT_ONNX, PLAN_SCHEMA, QUANT_TYPES, STAGE_SCHEMA


@dataclass(frozen=True)
class Candidate:
    fmt: str  # spec.FORMATS
    quant: str  # the base type: a spec.QUANT_TYPES name
    # GGUF: per-tensor (name, type) overrides of the base type; ONNX: (("max_size_mib", "…"),), the size the export
    # solves the layout for (onnxquant); () = uniform
    recipe: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """A unique name: the stage records' and measurement tables' key (a recipe by its hash)."""
        return f"{self.fmt}:{self.quant}" + (f"+mixed-{self.recipe_id}" if self.recipe else "")

    @property
    def recipe_id(self) -> str:

        return hashlib.sha256(repr(self.recipe).encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        if self.recipe and self.fmt == FORMAT_ONNX:  # the rule: the export solves the layout for this size
            return f"onnx mixed 4/8-bit ≤ {dict(self.recipe)['max_size_mib']} MiB"
        return f"{self.fmt} mixed ≈{self.quant}" if self.recipe else f"{self.fmt} {self.quant}"

    @property
    def uses_imatrix(self) -> bool:
        """Its quantizer weighs by an importance matrix: a type that does, or a mixture (K-types, ONNX int4 blocks)."""
        return bool(self.recipe) or QUANT_TYPES[self.quant].uses_imatrix

    def as_dict(self) -> dict:
        d = {"format": self.fmt, "quant": self.quant}
        return d | ({"recipe": dict(self.recipe)} if self.recipe else {})

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        return cls(d["format"], d["quant"], tuple(sorted((d.get("recipe") or {}).items())))


@dataclass(frozen=True)
class Prediction:
    """plan's footprint of a candidate, before it is built."""

    storage_mib: float
    memory_mib: float  # peak RSS of the serving process at the planned context
    memory_terms_mib: dict  # base, weights, kv_cache, compute
    memory_note: str | None = None  # set where the calibration never measured this type


@dataclass(frozen=True)
class Measurement:
    """The sweep's measurement of a built candidate: fidelity against the merged model, one bench run."""

    kld: float
    top1: float
    decode_tok_s: float
    ttft_ms: float
    peak_rss_mib: float
    storage_mib: float

    @classmethod
    def from_dict(cls, d: dict) -> Measurement:
        """Read back from a build's record: a value that is not a finite, non-negative number is refused (a NaN
        would pass every comparison a plan makes against a budget)."""
        values = {f.name: d[f.name] for f in fields(cls)}
        for name, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"measured {name} {v!r} is not a finite non-negative number")
        return cls(**values)


KLD_MEASURED, KLD_PRIOR = "measured", "prior"


@dataclass(frozen=True)
class Row:
    """One candidate in a plan: predicted, measured where the sweep built it, and why it does not fit."""

    candidate: Candidate
    predicted: Prediction
    kld: float
    kld_source: str  # KLD_MEASURED or KLD_PRIOR
    reasons: tuple[str, ...] = ()
    measured: Measurement | None = None
    mixed: dict | None = None  # a mixed recipe's account: palette, predicted error, reference type (plan_mixed)

    @property
    def fits(self) -> bool:
        return not self.reasons

    @property
    def decode_tok_s(self) -> float | None:
        return self.measured.decode_tok_s if self.measured else None

    def as_dict(self) -> dict:
        """The flat row of `edgeq plan --json` and the sweep's stage record."""
        d = self.candidate.as_dict() | asdict(self.predicted)
        d |= {"kld": self.kld, "kld_source": self.kld_source, "decode_tok_s": self.decode_tok_s}
        d |= {"reasons": list(self.reasons), "fits": self.fits}
        d |= {"mixed": self.mixed} if self.mixed else {}
        return d | ({"measured": asdict(self.measured)} if self.measured else {})

    @classmethod
    def from_dict(cls, d: dict) -> Row:
        return cls(
            Candidate.from_dict(d),
            Prediction(d["storage_mib"], d["memory_mib"], d["memory_terms_mib"], d.get("memory_note")),
            d["kld"],
            d["kld_source"],
            tuple(d["reasons"]),
            Measurement.from_dict(d["measured"]) if d.get("measured") else None,
            d.get("mixed"),
        )


@dataclass(frozen=True)
class Plan:
    """Every candidate the profile allows, predicted (and, after the sweep, measured), and the choice."""

    profile: str
    model: str
    n_ctx: int  # the context planned for, in tokens
    prompt_tokens: int
    memory_budget_mib: float
    storage_budget_mib: float
    calibration: dict  # name, path, measured_on, runtime_config, warnings
    rows: tuple[Row, ...]
    chosen: Candidate | None

    def row(self, candidate: Candidate) -> Row:
        return next(r for r in self.rows if r.candidate == candidate)

    def as_dict(self) -> dict:

        return {
            "schema": PLAN_SCHEMA,
            "profile": self.profile,
            "model": self.model,
            "ctx": self.n_ctx,
            "prompt_tokens": self.prompt_tokens,
            "memory_budget_mib": self.memory_budget_mib,
            "storage_budget_mib": self.storage_budget_mib,
            "calibration": self.calibration,
            "candidates": [r.as_dict() for r in self.rows],
            "chosen": self.chosen and self.chosen.as_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        return cls(
            d["profile"],
            d["model"],
            d["ctx"],
            d["prompt_tokens"],
            d["memory_budget_mib"],
            d["storage_budget_mib"],
            d["calibration"],
            tuple(Row.from_dict(r) for r in d["candidates"]),
            d["chosen"] and Candidate.from_dict(d["chosen"]),
        )


def _fields(cls, d: dict, **nested) -> dict:
    """A record's fields read from its JSON: every field without a default must be there (a KeyError marks a record
    cut short, which a stage cache treats as a miss); `nested` reads a field as its own record."""
    out = {}
    for f in fields(cls):
        if f.name in d:
            out[f.name] = nested[f.name](d[f.name]) if f.name in nested and d[f.name] is not None else d[f.name]
        elif f.default is MISSING and f.default_factory is MISSING:
            raise KeyError(f"{cls.__name__}.{f.name}")
    return out


class Flat:
    """A record whose JSON is its own fields (read back through _fields): the dataclasses below that need no more."""

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**_fields(cls, d))


# ---------------------------------------------------------------------------------------------
# fine-tune and merge


@dataclass(frozen=True)
class FinetuneResult(Flat):
    """What a fine-tune left: its --out (the adapter in its adapter/ folder, a full fine-tune's model in model/)
    and the run's summary."""

    path: str
    method: str  # qlora, lora or full (spec.FINETUNE_METHODS)
    output: str  # the folder under path the run wrote: adapter, or model for a full fine-tune
    train_loss_first: float | None
    train_loss_last: float | None
    eval_loss: float | None  # None: no held-out examples
    steps: int
    resumed_from_step: int
    steps_run: int
    seconds: float
    seconds_per_step: float
    peak_rss_mib: float
    trainable_params: int
    total_params: int
    world_size: int
    examples: dict  # train, eval, truncated
    data: dict  # the training data's statistics (data.Dataset.stats)
    frozen_base: dict | None  # quantized_params, bits_per_param; None: the base was not quantized
    peak_vram_mib: float | None = None  # CUDA only

    def summary(self) -> dict:
        """The run's numbers, as the adapter's manifest and the build's manifest keep them."""
        d = {k: v for k, v in asdict(self).items() if k != "path"}
        return d if self.peak_vram_mib is not None else {k: v for k, v in d.items() if k != "peak_vram_mib"}

    def as_dict(self) -> dict:
        return {"path": self.path, **self.summary()}


@dataclass(frozen=True)
class MergeCheck:
    """The merge's proof: merged logits against base + adapter (unmerged), in float64."""

    max_abs_logit_diff: float
    tolerance: float
    adapter_effect_max_abs_logit: float  # how far the adapter moves the base's logits: the check is not vacuous
    dtype_checked: str
    inputs: int


@dataclass(frozen=True)
class MergeResult:
    """The merged Hugging Face folder and how it was made."""

    path: str
    dtype: str
    merge_into: str  # the policy applied (merge.py)
    requested_merge_into: str
    trained_quantization: dict | None  # the frozen base's quantization during training (none for plain LoRA)
    system_prompt: str | None  # embedded as the template's default; None: the base template's own
    verification: MergeCheck | None  # None: a full fine-tune's model, nothing merged (merge.adopt)

    def config(self) -> dict:
        return {k: getattr(self, k) for k in ("dtype", "merge_into", "requested_merge_into")} | {
            "trained_quantization": self.trained_quantization,
            "system_prompt": self.system_prompt,
        }

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "config": self.config(),
            "verification": self.verification and asdict(self.verification),
        }

    @classmethod
    def from_dict(cls, d: dict) -> MergeResult:
        check = d["verification"] and MergeCheck(**d["verification"])
        return cls(path=d["path"], **d["config"], verification=check)


# ---------------------------------------------------------------------------------------------
# export


@dataclass(frozen=True)
class ExportResult(Flat):
    """An artifact as an exporter wrote it (a .gguf file or an ONNX GenAI folder) and the gates it passed."""

    path: str
    fmt: str  # spec.FORMATS
    quant: str  # the type written (GGUF --quant auto: the file type of the mixture)
    bytes: int
    bits_per_weight: float  # GGUF: measured (bytes × 8 / params); ONNX: the type's nominal figure
    gates: dict  # gate → what it checked (export/gguf.py, export/onnx.py: gate_*)
    recipe: dict | None = None  # GGUF: per-tensor type overrides of `quant`
    mixed: dict | None = None  # GGUF --quant auto: the solver's account (pricing.plan_mixed)
    params: int | None = None  # GGUF: weights counted in the file
    arch: str | None = None  # GGUF: general.architecture
    pre_tokenizer: str | None = None  # GGUF: tokenizer.ggml.pre
    float_type: str | None = None  # GGUF: the float file the fidelity gate compared (a quantized type is made from it)
    execution_provider: str | None = None  # ONNX
    quant_recipe: dict | None = None  # ONNX int4: every weight's bits and block (onnxquant), and the solver's budget
    imatrix_source: str | None = None  # the data the quantizer's importance matrix came from (set by build)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def importance(self) -> dict:
        """The importance matrix's summary (source, sha256): GGUF reports it with its gates, ONNX with its layout."""
        found = (self.gates or {}).get("imatrix") or (self.quant_recipe or {}).get("importance")
        return found if isinstance(found, dict) else {}


@dataclass(frozen=True)
class AdapterResult(Flat):
    """A LoRA adapter exported as a GGUF adapter (export/adapter.py) and the gate it passed."""

    path: str
    base: str  # the HF base it was checked on
    base_sha256: str  # basemodel.base_fingerprint of that base: a GGUF of another is refused beside it
    float_type: str  # spec.ADAPTER_FLOAT_TYPES
    bytes: int
    rank: int
    alpha: float
    weights: int  # adapted weights of the base (A/B pairs)
    params: int
    gate: dict  # F32 base + adapter in llama.cpp against peft in float32 (export/adapter.gate_adapter)


# ---------------------------------------------------------------------------------------------
# evaluation


@dataclass(frozen=True)
class Fidelity(Flat):
    """An artifact's logits against its float reference on the same tokens (evaluate.compare)."""

    positions: int
    ppl_reference: float
    ppl_artifact: float
    mean_kld: float  # nats
    top1_agreement: float  # 0–1
    max_abs_logit: float


@dataclass(frozen=True)
class AnswerNLL(Flat):
    """Teacher-forced negative log-likelihood of the reference answers (nats per token) and its perplexity."""

    mean_nll: float
    ppl: float
    tokens: int
    examples: int


@dataclass(frozen=True)
class Agreement(Flat):
    """How far the artifact's greedy answers follow the float model's on the same prompts."""

    identical_pct: float
    prefix_agreement_pct: float  # mean share of tokens before the first difference
    n: int


@dataclass(frozen=True)
class Score:
    """One model's task score on the held-out data (0–100 in its metric) and, where computed, its answer NLL."""

    metric: str
    why: str  # why this metric (read from the references, or chosen by --metric)
    score: float
    answers: tuple[str, ...]
    answer_nll: AnswerNLL | None = None
    details: dict = field(default_factory=dict)  # the metric's own counts (valid JSON, n, …)

    def as_dict(self, answers: bool = True) -> dict:
        d = {**self.details, "metric": self.metric, "why": self.why, "score": self.score}
        d |= {"answer_nll": asdict(self.answer_nll)} if self.answer_nll is not None else {}
        return d | ({"answers": list(self.answers)} if answers else {})

    @classmethod
    def from_dict(cls, d: dict) -> Score:
        known = {"metric", "why", "score", "answers", "answer_nll"}
        nll = d.get("answer_nll")
        return cls(
            d["metric"],
            d["why"],
            d["score"],
            tuple(d.get("answers", ())),
            AnswerNLL.from_dict(nll) if nll is not None else None,
            {k: v for k, v in d.items() if k not in known},
        )


@dataclass(frozen=True)
class Evaluation:
    """`edgeq eval`: an artifact's fidelity on held-out text and, with task data, on the task's conversations,
    its task score (prompts as in training; `served`: only the user's turn, its own template) and answer NLL."""

    artifact: str
    fmt: str
    reference: str
    text: Fidelity
    task_text: Fidelity | None = None
    task: Score | None = None  # with its answer_nll
    served: Score | None = None
    adapter: str | None = None  # a GGUF LoRA adapter applied to the artifact throughout

    def as_dict(self) -> dict:
        """`edgeq eval --json`."""
        d = {"artifact": self.artifact, "format": self.fmt, "reference": self.reference, "text": asdict(self.text)}
        if self.adapter:
            d["adapter"] = self.adapter
        if self.task_text:
            d["task_text"] = asdict(self.task_text)
        if self.task:
            d["task"] = {k: v for k, v in self.task.as_dict().items() if k != "answer_nll"}
            d["answer_nll"] = asdict(self.task.answer_nll) if self.task.answer_nll else None
        if self.served:
            d["task_served"] = self.served.as_dict()
        return d


@dataclass(frozen=True)
class EvalResult:
    """The eval stage: the artifact's fidelity and task score (as evaluated and as served), the float
    models' scores and the artifact's agreement with the merged model's answers."""

    text: Fidelity  # on held-out text
    task_text: Fidelity  # on the task's conversations
    artifact: Score  # prompts rendered as in training
    served: Score  # only the user's turn, the artifact's own template and runtime
    merged: Score
    base: Score
    agreement: Agreement

    def as_dict(self) -> dict:
        return {
            "text": asdict(self.text),
            "task_text": asdict(self.task_text),
            "artifact": self.artifact.as_dict(),
            "served": self.served.as_dict(),
            "merged": self.merged.as_dict(),
            "base": self.base.as_dict(),
            "agreement": asdict(self.agreement),
        }

    @classmethod
    def from_dict(cls, d: dict) -> EvalResult:
        scores = {k: Score.from_dict(d[k]) for k in ("artifact", "served", "merged", "base")}
        fid = {k: Fidelity.from_dict(d[k]) for k in ("text", "task_text")}
        return cls(**fid, **scores, agreement=Agreement.from_dict(d["agreement"]))


# ---------------------------------------------------------------------------------------------
# bench


@dataclass(frozen=True)
class Stats:
    """One metric over a bench's repetitions."""

    mean: float
    sd: float
    min: float
    median: float
    n: int
    samples: tuple[float, ...]

    def as_dict(self) -> dict:
        return asdict(self) | {"samples": list(self.samples)}

    @classmethod
    def from_dict(cls, d: dict) -> Stats:
        return cls(**(_fields(cls, d) | {"samples": tuple(d["samples"])}))


@dataclass(frozen=True)
class BenchSettings:
    prompt_tokens: int
    gen_tokens: int
    reps: int
    threads: int
    ctx: int
    gpu_layers: int
    profile: str | None  # the profile's name, where its budgets were checked
    adapters: tuple[str, ...] = ()  # GGUF LoRA adapters loaded with the artifact, the first applied while timing


@dataclass(frozen=True)
class BenchResult:
    """`edgeq bench`: settings, where it ran, each metric over the repetitions and the checks; its JSON
    (`--output json`) is the versioned spec.BENCH_SCHEMA."""

    artifact: str
    fmt: str
    backend: str
    settings: BenchSettings
    memory_accounting: dict  # method, and what the gated memory_mib adds up
    environment: dict  # cpu, cores, ram, os, versions, llama.cpp's configuration, the artifact's sha256 and bytes
    results: dict[str, Stats]  # metric → its statistics (bench.METRICS)
    checks: tuple[Check, ...]

    def median(self, metric: str) -> float:
        return self.results[metric].median

    @property
    def artifact_sha256(self) -> str:
        return self.environment["artifact_sha256"]

    @property
    def artifact_mib(self) -> float:
        return self.environment["artifact_bytes"] / 2**20

    def as_dict(self) -> dict:
        return {
            "schema": BENCH_SCHEMA,
            "artifact": self.artifact,
            "format": self.fmt,
            "backend": self.backend,
            "settings": asdict(self.settings) | {"adapters": list(self.settings.adapters)},  # as JSON reads back
            "memory_accounting": self.memory_accounting,
            "environment": self.environment,
            "results": {m: s.as_dict() for m, s in self.results.items()},
            "checks": [c.as_dict() for c in self.checks],
        }

    @classmethod
    def from_dict(cls, d: dict) -> BenchResult:
        if d.get("schema") != BENCH_SCHEMA:
            raise ValueError(f"bench record schema {d.get('schema')!r}, expected {BENCH_SCHEMA}")
        return cls(
            d["artifact"],
            d["format"],
            d["backend"],
            BenchSettings(
                **_fields(BenchSettings, d["settings"]) | {"adapters": tuple(d["settings"].get("adapters", ()))}
            ),
            d["memory_accounting"],
            d["environment"],
            {m: Stats.from_dict(s) for m, s in d["results"].items()},
            tuple(Check.from_dict(c) for c in d["checks"]),
        )


# ---------------------------------------------------------------------------------------------
# the build


@dataclass(frozen=True)
class StageRecord:
    """A finished build stage's OUT/.edgeq/<stage>/stage.json: its cache key, its time, its record (the stage's
    result type, as JSON) and the size and mtime of every file it left."""

    key: str
    seconds: float
    result: dict
    files: dict  # path inside OUT → [bytes, mtime_ns]

    def as_dict(self) -> dict:
        return {"schema": STAGE_SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> StageRecord:
        if d.get("schema") != STAGE_SCHEMA:
            raise ValueError(f"stage record schema {d.get('schema')!r}, expected {STAGE_SCHEMA}")
        r = cls(**_fields(cls, d))
        typed = isinstance(r.key, str) and isinstance(r.result, dict) and isinstance(r.files, dict)
        timed = isinstance(r.seconds, (int, float)) and not isinstance(r.seconds, bool) and math.isfinite(r.seconds)
        if not (typed and timed and r.seconds >= 0):
            raise ValueError("a stage record's key, seconds, result or files is of the wrong type")
        return r


@dataclass(frozen=True)
class Published:
    """The report stage: the file names it wrote into the build's folder."""

    names: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"published": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict) -> Published:
        return cls(tuple(d["published"]))


@dataclass(frozen=True)
class BuildInputs:
    """What a build read, with the sha256 its stage keys were computed from."""

    base: str
    base_sha256: dict  # file in the base folder → sha256
    data: str  # the training data (with no --test-data: the training part of the split)
    data_sha256: str
    test_data: str | None
    test_data_sha256: str | None
    holdout: dict | None  # no --test-data: how --data was split (source, train, held_out, seed)

    def as_dict(self) -> dict:
        test = self.test_data and {"path": self.test_data, "sha256": self.test_data_sha256}
        return {
            "base": {"path": self.base, "sha256": self.base_sha256},
            "data": {"path": self.data, "sha256": self.data_sha256},
            "test_data": test,
            "holdout": self.holdout,
        }


SCORED = ("base", "merged", "artifact", "served")  # the models a build scores on its task, in the report's order


@dataclass(frozen=True)
class BuildResult:
    """Everything a build made, as its stages' records: what the report stage renders into the build's folder and
    what `edgeq build` returns. The report stage's own record is the list of files it wrote (`published`)."""

    out: str
    profile: Profile
    inputs: BuildInputs
    keys: dict  # stage → its cache key
    system: SystemPrompt  # the default system prompt the artifact is served with
    sweep_mode: str  # spec.SWEEP_MODES
    finetune: FinetuneResult
    merge: MergeResult
    plan: Plan  # the sweep's: every candidate, measured where built, and the choice
    export: ExportResult
    eval: EvalResult
    bench: BenchResult
    quality: tuple[Check, ...]  # the profile's quality budgets (KLD, task score as served)
    published: tuple[str, ...] = ()
    stages: dict = field(default_factory=dict)  # stage → (seconds, "done" | "cached"); set by build()

    @property
    def candidate(self) -> Candidate:
        return self.plan.chosen

    @property
    def artifact(self) -> str:
        """The published artifact: the export's, copied into the build's folder."""
        return f"{self.out}/{self.export.name}"

    @property
    def checks(self) -> tuple[Check, ...]:
        """bench's profile checks, then the quality checks."""
        return self.bench.checks + self.quality

    @property
    def breaches(self) -> list[str]:
        return [c.line() for c in self.checks if not c.passed]

    @property
    def scores(self) -> dict:
        """Task score (0–100) of base, merged, artifact and served, and the metric."""
        ev = self.eval
        return {"metric": ev.merged.metric} | {k: getattr(ev, k).score for k in SCORED}

"""What moves between plan, the build's stages and its report, typed.

A `Candidate` is what could be built (format + base quant type + per-tensor recipe); plan gives it
a `Prediction`, the sweep a `Measurement`; a `Row` is one candidate with both and the reasons it
does not fit; a `Plan` is every row and the choice. Build's later stages hand on an `ExportResult`,
an `EvalResult` and a `BenchResult`, and `build()` returns a `BuildResult`.

Every record is frozen and reads and writes the JSON it is stored as (stage records under
OUT/.edgeq/, `edgeq plan --json`, the manifest), so a cached stage comes back as the same type.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, fields

from edgeq.checks import Check
from edgeq.spec import FORMAT_ONNX, PLAN_SCHEMA


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


@dataclass(frozen=True)
class ExportResult:
    """The chosen artifact as the export stage wrote it (name inside the stage folder) and its gates."""

    name: str
    candidate: Candidate
    bytes: int | None
    gates: dict | None
    imatrix_source: str | None = None
    details: dict = field(default_factory=dict)  # everything else the exporter reported

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "candidate": self.candidate.as_dict(),
            "bytes": self.bytes,
            "gates": self.gates,
            "imatrix_source": self.imatrix_source,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ExportResult:
        return cls(
            d["name"], Candidate.from_dict(d["candidate"]), d["bytes"], d["gates"], d["imatrix_source"], d["details"]
        )


@dataclass(frozen=True)
class Score:
    """One model's task score on the held-out data (0–100 in its metric) and, where computed, its answer NLL."""

    metric: str
    why: str  # why this metric (read from the references, or chosen by --metric)
    score: float
    answers: tuple[str, ...]
    answer_nll: dict | None = None  # mean_nll, ppl, tokens, examples
    details: dict = field(default_factory=dict)  # the metric's own counts (valid JSON, n, …)

    def as_dict(self, answers: bool = True) -> dict:
        d = {**self.details, "metric": self.metric, "why": self.why, "score": self.score}
        d |= {"answer_nll": self.answer_nll} if self.answer_nll is not None else {}
        return d | ({"answers": list(self.answers)} if answers else {})

    @classmethod
    def from_dict(cls, d: dict, answer_nll: dict | None = None) -> Score:
        known = {"metric", "why", "score", "answers", "answer_nll", "model"}
        return cls(
            d["metric"],
            d["why"],
            d["score"],
            tuple(d.get("answers", ())),
            d.get("answer_nll", answer_nll),
            {k: v for k, v in d.items() if k not in known},
        )


@dataclass(frozen=True)
class EvalResult:
    """The eval stage: the artifact's fidelity and task score (as evaluated and as served), the float
    models' scores and the artifact's agreement with the merged model's answers."""

    text: dict  # compare_logits on held-out text: mean_kld, top1_agreement, ppl, max_abs_logit
    task_text: dict  # the same on the task's conversations
    artifact: Score  # prompts rendered as in training
    served: Score  # only the user's turn, the artifact's own template and runtime
    merged: Score
    base: Score
    agreement: dict  # identical_pct, prefix_agreement_pct, n

    def as_dict(self) -> dict:
        return {
            "text": self.text,
            "task_text": self.task_text,
            "artifact": self.artifact.as_dict(),
            "served": self.served.as_dict(),
            "merged": self.merged.as_dict(),
            "base": self.base.as_dict(),
            "agreement": self.agreement,
        }

    @classmethod
    def from_dict(cls, d: dict) -> EvalResult:
        scores = {k: Score.from_dict(d[k]) for k in ("artifact", "served", "merged", "base")}
        return cls(d["text"], d["task_text"], **scores, agreement=d["agreement"])


@dataclass(frozen=True)
class BenchResult:
    """`edgeq bench`'s record of the artifact (its JSON output, kept whole) and the medians the build reads."""

    record: dict

    @property
    def checks(self) -> list[Check]:
        return [Check.from_dict(c) for c in self.record["checks"]]

    def median(self, metric: str) -> float:
        return self.record["results"][metric]["median"]

    @property
    def artifact_sha256(self) -> str:
        return self.record["environment"]["artifact_sha256"]

    @property
    def artifact_mib(self) -> float:
        return self.record["environment"]["artifact_bytes"] / 2**20

    def as_dict(self) -> dict:
        return self.record

    @classmethod
    def from_dict(cls, d: dict) -> BenchResult:
        return cls(d)


@dataclass(frozen=True)
class BuildResult:
    """What `edgeq build` leaves: the published artifact and files, the checks and the verdict."""

    out: str
    artifact: str  # path of the published artifact
    candidate: Candidate
    published: tuple[str, ...]  # file names in `out` the report stage wrote
    checks: tuple[Check, ...]  # bench's profile checks, then the quality checks
    scores: dict  # task score (0–100) of base, merged, artifact and served, and the metric
    stages: dict = field(default_factory=dict)  # stage → (seconds, "done" | "cached"); set by build()

    @property
    def breaches(self) -> list[str]:
        return [c.line() for c in self.checks if not c.passed]

    def as_dict(self) -> dict:
        return {
            "out": self.out,
            "artifact": self.artifact,
            "candidate": self.candidate.as_dict(),
            "published": list(self.published),
            "checks": [c.as_dict() for c in self.checks],
            "scores": self.scores,
        }

    @classmethod
    def from_dict(cls, d: dict) -> BuildResult:
        checks = tuple(Check.from_dict(c) for c in d["checks"])
        candidate = Candidate.from_dict(d["candidate"])
        return cls(d["out"], d["artifact"], candidate, tuple(d["published"]), checks, d["scores"])

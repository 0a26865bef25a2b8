"""records: every stage record reads back from its JSON as the same value; a candidate's key is unique."""

import dataclasses
import json

import pytest

from edgeq.checks import MAX, Check
from edgeq.profiles import load_profile
from edgeq.records import (
    KLD_MEASURED,
    KLD_PRIOR,
    Agreement,
    AnswerNLL,
    BenchResult,
    BenchSettings,
    BuildInputs,
    BuildResult,
    Candidate,
    EvalResult,
    ExportResult,
    Fidelity,
    FinetuneResult,
    Measurement,
    MergeCheck,
    MergeResult,
    Plan,
    Prediction,
    Published,
    Row,
    Score,
    StageRecord,
    Stats,
)
from edgeq.serving import SystemPrompt
from edgeq.spec import BENCH_SCHEMA, STAGE_SCHEMA

Q8 = Candidate("gguf", "Q8_0")
MIXED = Candidate("gguf", "Q4_K_M", (("blk.0.ffn_down.weight", "Q8_0"), ("output.weight", "Q6_K")))
MEASURED = Measurement(kld=0.005, top1=0.98, decode_tok_s=70.0, ttft_ms=300.0, peak_rss_mib=237.0, storage_mib=138.1)
PREDICTED = Prediction(138.2, 227.7, {"base": 60.0, "weights": 140.0, "kv_cache": 20.0, "compute": 7.7})


def _json(record):
    """Through JSON text, as a stage record on disk."""
    return json.loads(json.dumps(record.as_dict()))


def _plan(chosen=Q8) -> Plan:
    rows = (
        Row(Q8, PREDICTED, MEASURED.kld, KLD_MEASURED, (), MEASURED),
        Row(MIXED, PREDICTED, 0.07, KLD_PRIOR, ("KLD 0.071 > 0.05 (prior)",), mixed={"palette": ["Q6_K", "Q8_0"]}),
    )
    cal = {"name": "x", "path": "/x.json", "measured_on": {"cpu": "AMD EPYC"}, "runtime_config": None, "warnings": []}
    return Plan("drone", "/m", 1024, 128, 512, 1024, cal, rows, chosen)


def test_candidate_keys_are_unique_and_name_the_recipe():
    assert Q8.key == "gguf:Q8_0" and Q8.label == "gguf Q8_0"
    assert MIXED.key != Candidate("gguf", "Q4_K_M").key and MIXED.key == f"gguf:Q4_K_M+mixed-{MIXED.recipe_id}"
    other = Candidate("gguf", "Q4_K_M", (("blk.0.ffn_down.weight", "Q8_0"), ("output.weight", "Q5_K")))
    assert other.key != MIXED.key and MIXED.label == "gguf mixed ≈Q4_K_M"
    assert Candidate.from_dict(_json(MIXED)) == MIXED and hash(Candidate.from_dict(_json(MIXED))) == hash(MIXED)


@pytest.mark.parametrize("chosen", [Q8, None])
def test_a_plan_reads_back_from_its_json(chosen):
    plan = _plan(chosen)
    back = Plan.from_dict(_json(plan))
    assert back == plan
    assert back.row(Q8).fits and not back.row(MIXED).fits and back.row(Q8).decode_tok_s == 70.0
    assert back.row(MIXED).measured is None and back.row(MIXED).decode_tok_s is None


def test_a_plan_row_keeps_the_json_schema_of_edgeq_plan():
    row = _json(_plan())["candidates"][1]
    assert {"format", "quant", "storage_mib", "memory_mib", "memory_terms_mib", "memory_note"} <= set(row)
    assert {"kld", "kld_source", "decode_tok_s", "reasons", "fits"} <= set(row) and "measured" not in row
    assert row["recipe"] == {"blk.0.ffn_down.weight": "Q8_0", "output.weight": "Q6_K"}
    assert row["mixed"] == {"palette": ["Q6_K", "Q8_0"]}


SCORE = Score("json", "the references are JSON", 77.5, ("{}", "x"), AnswerNLL(0.03, 1.03, 40, 2), {"n": 2})
FIDELITY = Fidelity(640, 12.5, 12.6, 0.01, 0.97, 0.8)
BENCH = BenchResult(
    "/o/.edgeq/export/model.Q8_0.gguf",
    "gguf",
    "llama.cpp",
    BenchSettings(128, 32, 3, 2, 1024, 0, "drone"),
    {"method": "rss", "gated": "memory_mib = peak_rss_mib"},
    {"artifact_sha256": "ab", "artifact_bytes": 2**20, "cpu": "AMD EPYC"},
    {
        "peak_rss_mib": Stats(236.0, 1.0, 235.0, 237.0, 3, (235.0, 237.0, 236.0)),
        "ttft_ms": Stats(300.0, 0.0, 300.0, 300.0, 1, (300.0,)),
        "decode_tok_s": Stats(70.0, 0.0, 70.0, 70.0, 1, (70.0,)),
    },
    (Check("memory", "MiB", 237.0, 512, MAX),),
)
FINETUNE = FinetuneResult(
    "/o/.edgeq/finetune",
    "qlora",
    "adapter",
    2.1,
    0.4,
    0.5,
    60,
    0,
    60,
    700.0,
    11.7,
    2400.0,
    4_884_480,
    139_400_000,
    1,
    {"train": 300, "eval": 16, "truncated": 0},
    {"conversations": 316},
    {"quantized_params": 10, "bits_per_param": 4.127},
)
MERGE = MergeResult(
    "/o/.edgeq/merge/model",
    "float32",
    "dequantized",
    "auto",
    {"quant": "nf4"},
    None,
    MergeCheck(1e-6, 1e-4, 3.2, "float64", 4),
)
EXPORT = ExportResult(
    "/o/.edgeq/export/model.Q8_0.gguf",
    "gguf",
    "Q8_0",
    144_810_720,
    8.5,
    {"fidelity": {"top1": 1.0}},
    params=134_515_008,
    arch="llama",
    pre_tokenizer="smollm",
    float_type="F16",
    imatrix_source="train.jsonl",
)


@pytest.mark.parametrize(
    "record",
    [
        SCORE,
        FIDELITY,
        EvalResult(FIDELITY, FIDELITY, SCORE, SCORE, SCORE, SCORE, Agreement(96.0, 98.5, 2)),
        EXPORT,
        ExportResult(
            "/o/onnx", "onnx", "auto", 9, 4.0, {"generates": "skipped"}, quant_recipe={"layout": {"a": "4/32"}}
        ),
        BENCH,
        FINETUNE,
        dataclasses.replace(FINETUNE, peak_vram_mib=812.5, frozen_base=None, eval_loss=None),
        MERGE,
        Published(("model.Q8_0.gguf", "report.md")),
        StageRecord("k" * 64, 12.5, BENCH.as_dict(), {".edgeq/bench/x": [1, 2]}),
    ],
    ids=lambda r: type(r).__name__,
)
def test_every_stage_record_reads_back_from_its_json(record):
    assert type(record).from_dict(_json(record)) == record


def test_a_record_cut_short_or_of_another_schema_does_not_read_back():
    d = _json(EXPORT)
    del d["gates"]
    with pytest.raises(KeyError):
        ExportResult.from_dict(d)
    for record, kind in ((BENCH, BenchResult), (StageRecord("k", 1.0, {}, {}), StageRecord)):
        old = _json(record) | {"schema": "edgeq.old/0"}
        with pytest.raises(ValueError, match="schema"):
            kind.from_dict(old)
    for seconds in (float("nan"), -1.0, "1", True):
        with pytest.raises(ValueError, match="seconds"):
            StageRecord.from_dict({"schema": STAGE_SCHEMA, "key": "k", "seconds": seconds, "result": {}, "files": {}})


def test_bench_json_keeps_its_schema_and_what_the_build_reads():
    d = _json(BENCH)
    assert d["schema"] == BENCH_SCHEMA and d["results"]["peak_rss_mib"]["samples"] == [235.0, 237.0, 236.0]
    assert BENCH.median("peak_rss_mib") == 237.0 and BENCH.artifact_mib == 1.0 and BENCH.checks[0].passed
    assert FINETUNE.summary() == {k: v for k, v in FINETUNE.as_dict().items() if k != "path"}
    assert "peak_vram_mib" not in FINETUNE.summary()  # a CPU run has no VRAM figure, not a None one
    assert "answers" not in SCORE.as_dict(answers=False) and SCORE.as_dict()["n"] == 2
    assert EXPORT.name == "model.Q8_0.gguf" and ExportResult("/o/onnx/", "onnx", "int4", 1, 4.0, {}).name == "onnx"


def built_result() -> BuildResult:
    """A build of the drone profile as its records, its task gate breached as served (70 vs 77.5)."""
    served = dataclasses.replace(SCORE, score=70.0)
    evaluated = EvalResult(FIDELITY, FIDELITY, SCORE, served, SCORE, SCORE, Agreement(96.0, 98.5, 2))
    quality = (Check("kld", "nats", 0.01, 0.1, MAX), Check("task_drop", "points", 7.5, 5, MAX))
    inputs = BuildInputs("/b", {"model.safetensors": "c0"}, "/d.jsonl", "d0", None, None, None)
    system = SystemPrompt("Fly safe.", "training data", "opens 3 of 3 training conversations")
    keys = {"finetune": "k1", "merge": "k2"}
    return BuildResult(
        "/o",
        load_profile("drone"),
        inputs,
        keys,
        system,
        "first-fit",
        FINETUNE,
        MERGE,
        _plan(),
        EXPORT,
        evaluated,
        BENCH,
        quality,
    )


def test_a_build_result_reads_its_verdict_and_scores_from_its_records():
    built = built_result()
    assert built.candidate == Q8 and built.artifact == "/o/model.Q8_0.gguf"
    assert [c.name for c in built.checks] == ["memory", "kld", "task_drop"]
    assert built.breaches == ["task_drop 7.5 points vs max 5"]
    assert built.scores == {"metric": "json", "base": 77.5, "merged": 77.5, "artifact": 77.5, "served": 70.0}

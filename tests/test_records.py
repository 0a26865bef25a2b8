"""records: every stage record reads back from its JSON as the same value; a candidate's key is unique."""

import json

import pytest

from edgeq.checks import MAX, MIN, Check
from edgeq.records import (
    KLD_MEASURED,
    KLD_PRIOR,
    BenchResult,
    BuildResult,
    Candidate,
    EvalResult,
    ExportResult,
    Measurement,
    Plan,
    Prediction,
    Row,
    Score,
)

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


def test_stage_records_read_back():
    score = Score("json", "the references are JSON", 77.5, ("{}", "x"), {"mean_nll": 0.03}, {"n": 2})
    ev = EvalResult({"mean_kld": 0.01}, {"mean_kld": 0.02}, score, score, score, score, {"identical_pct": 96.0})
    export = ExportResult("model.Q8_0.gguf", Q8, 123, {"fidelity": {"top1": 1.0}}, "train.jsonl", {"arch": "llama"})
    bench = BenchResult(
        {
            "checks": [Check("memory", "MiB", 237.0, 512, MAX).as_dict()],
            "results": {"peak_rss_mib": {"median": 237.0}},
            "environment": {"artifact_sha256": "ab", "artifact_bytes": 2**20},
        }
    )
    checks = (Check("decode", "tok/s", 5.0, 10, MIN), Check("kld", "nats", 0.01, 0.1, MAX))
    built = BuildResult("/o", "/o/model.Q8_0.gguf", Q8, ("model.Q8_0.gguf", "report.md"), checks, {"base": 0.0})
    for record in (score, ev, export, bench, built):
        assert type(record).from_dict(_json(record)) == record
    assert bench.median("peak_rss_mib") == 237.0 and bench.artifact_mib == 1.0 and bench.checks[0].passed
    assert built.breaches == ["decode 5 tok/s vs min 10"]
    assert "answers" not in score.as_dict(answers=False) and score.as_dict()["n"] == 2

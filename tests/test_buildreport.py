"""buildreport: the manifest and report of a build are rendered from its BuildResult alone, and read back."""

import json

from edgeq.buildreport import manifest, markdown
from edgeq.checks import Check
from edgeq.records import Stats
from edgeq.spec import MANIFEST_SCHEMA
from tests.test_records import BENCH, FINETUNE, MERGE, PREDICTED, built_result


def test_the_manifest_reads_back_as_the_build_records():
    built = built_result()
    m = json.loads(json.dumps(manifest(built, True)))
    assert m["schema"] == MANIFEST_SCHEMA and m["ollama_template"] is True
    assert m["finetune"] == FINETUNE.summary() and m["merge"]["config"] == MERGE.config()
    assert m["stages"] == {"finetune": {"key": "k1"}, "merge": {"key": "k2"}}
    assert (
        m["inputs"]["base"] == {"path": "/b", "sha256": {"model.safetensors": "c0"}}
        and m["inputs"]["test_data"] is None
    )
    assert m["artifact"] == {"path": "model.Q8_0.gguf", "sha256": "ab", "bytes": 144_810_720}
    fp = m["footprint"]
    assert fp["predicted_peak_rss_mib"] == PREDICTED.memory_mib and fp["measured_peak_rss_mib"] == 237.0
    assert abs(fp["prediction_error"] - (227.7 - 237.0) / 237.0) < 1e-12 and fp["measured_storage_mib"] == 1.0
    assert Stats.from_dict(m["bench"]["results"]["peak_rss_mib"]) == BENCH.results["peak_rss_mib"]
    assert [Check.from_dict(c) for c in m["bench"]["checks"]] == list(BENCH.checks)
    assert [Check.from_dict(c) for c in m["quality_checks"]] == list(built.quality)
    assert m["task"]["agreement_with_merged"] == {"identical_pct": 96.0, "prefix_agreement_pct": 98.5, "n": 2}
    assert m["fidelity"]["task_served"]["score"] == 70.0 and "answers" not in m["fidelity"]["task_served"]
    assert m["quant_recipe"]["imatrix_source"] == "train.jsonl" and m["system_prompt"]["text"] == "Fly safe."


def test_the_report_states_the_verdict_and_the_scores_of_the_records():
    built = built_result()
    text = markdown(built, manifest(built, True))
    assert "**Result: budget breached** — task_drop 7.5 points vs max 5" in text
    assert "| **artifact as served** (only the user's turn, its embedded template) | **70.0** | |" in text
    assert "96.0 % identical answers" in text and "(sweep: first-fit)" in text
    assert "Default system prompt in the artifact: 'Fly safe.' (training data:" in text


def test_the_picture_shows_every_candidate_of_the_plan(tmp_path):
    """A first-fit build measures one candidate; the plot draws it filled and every other one hollow."""
    from edgeq.buildreport import plot

    built = built_result()
    drawn = plot(built.plan.rows, built.candidate, built.profile, tmp_path / "c.png")
    rows = built.plan.rows
    assert drawn == {
        "measured": sum(r.measured is not None for r in rows),
        "predicted": sum(not r.measured for r in rows),
    }
    assert drawn["measured"] >= 1 and drawn["predicted"] >= 1
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_llama3_modelfile_stops_at_its_own_turn_end_and_eos_and_keeps_its_template(tmp_path):
    """Llama-3's layout as the base model has it: eos <|end_of_text|>, turns ended by <|eot_id|>. The Modelfile
    keeps the GGUF's own template (no TEMPLATE line: it is not ChatML) and stops at exactly those two tokens."""
    from transformers import AutoTokenizer

    from edgeq.buildreport import modelfile
    from edgeq.profiles import load_profile
    from tests.export.test_tokenizer_families import llama3_tokenizer

    tok = AutoTokenizer.from_pretrained(llama3_tokenizer(tmp_path / "tok"))
    tok.eos_token = "<|end_of_text|>"
    text, chatml = modelfile("model.Q4_K_M.gguf", tok, load_profile("drone"))
    stops = {ln.split(" ", 2)[2] for ln in text.splitlines() if ln.startswith("PARAMETER stop ")}
    assert not chatml and "TEMPLATE" not in text
    assert stops == {'"<|end_of_text|>"', '"<|eot_id|>"'}


def test_the_reports_gains_are_the_differences_of_its_own_rows():
    """Base 10 points and 2.0 nats/token, merged 77.5 and 0.03, served 70: the fine-tune gained +67.5 points, the
    served artifact keeps +60.0, the answer NLL fell by 1.970 — each sign as a reader reads it."""
    import dataclasses

    from edgeq.records import AnswerNLL
    from tests.test_records import SCORE

    built = built_result()
    base = dataclasses.replace(SCORE, score=10.0, answer_nll=AnswerNLL(2.0, 7.39, 40, 2))
    built = dataclasses.replace(built, eval=dataclasses.replace(built.eval, base=base))
    text = markdown(built, manifest(built, True))
    assert "| base model | 10.0 | 2.000 |" in text and "| fine-tuned (QLoRA, merged, float32) | 77.5 | 0.030 |" in text
    assert "The fine-tune gained **+67.5 points**; the artifact as served keeps +60.0 over the base." in text
    assert "lowered it by 1.970 nats/token" in text
    assert "96.0 % identical answers, 98.5 % of tokens before the first difference" in text

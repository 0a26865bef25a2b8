"""compare-methods on a tiny model (one method end to end: each one's build is tested in test_build.py): its rate is
the best of its trials on the training split, the forgetting figures match an independent computation, a second call
resumes without work; the table and the seed's ratios are the runs' own figures."""

import json

import pytest

from edgeq.compare import GENERAL_CHOICES, GENERAL_TEXT, LR_FACTORS
from edgeq.runtime import ASSETS
from edgeq.spec import FINETUNE_LR
from tests.conftest import make_tiny_model, run_edgeq
from tests.test_build import _profile


@pytest.fixture(scope="module")
def base(tmp_path_factory, default_model):
    return make_tiny_model(tmp_path_factory.mktemp("base") / "base", default_model, max_position_embeddings=2048)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, base, small_data):
    root = tmp_path_factory.mktemp("compare")
    out = root / "out"
    args = ["compare-methods", "--base", base, "--data", small_data, "--profile", _profile(root / "mini.yaml")]
    args += ["--methods", "qlora", "--max-steps", 2, "--trial-share", 0.5, "--out", out]
    r = run_edgeq(*args, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"out": out, "args": args, "result": json.loads((out / "methods.json").read_text()), "stdout": r.stdout}


def test_each_method_trains_at_the_best_of_its_three_rates_on_the_training_split(compared):
    out, result = compared["out"], compared["result"]
    assert [r["method"] for r in result["runs"]] == ["qlora"]
    test_lines = (out / "split" / "test.jsonl").read_text().splitlines()
    train_lines = (out / "split" / "train.jsonl").read_text().splitlines()
    assert len(test_lines) == 5 and len(train_lines) == 43  # one split, 10 % of the 48 held out, for every run
    for run in result["runs"]:
        trials = run["trials"]
        assert [t["lr"] for t in trials] == pytest.approx([FINETUNE_LR[run["method"]] * f for f in LR_FACTORS])
        assert all(t["steps"] == 1 for t in trials)  # half of the 2 steps
        assert run["lr"] == min(trials, key=lambda t: t["eval_loss"])["lr"]
        where = out / "runs" / f"{run['method']}-s0"
        trained = json.loads(next((where / ".edgeq" / "finetune").glob("*/edgeq_finetune.json")).read_text())
        assert trained["config"]["lr"] == run["lr"]  # the build trained at the chosen rate
        build = json.loads((where / "manifest.json").read_text())
        assert build["finetune"]["method"] == run["method"] and build["inputs"]["data"]["path"].endswith("train.jsonl")
        assert (
            run["task_float"] == build["task"]["merged"]
            and run["task_served"] == build["fidelity"]["task_served"]["score"]
        )
        assert run["finetune_peak_rss_mib"] == build["finetune"]["peak_rss_mib"]
        assert run["trainable_params"] == build["finetune"]["trainable_params"] < run["total_params"]


def test_forgetting_is_the_kld_and_the_choice_accuracy_an_independent_count_gives(compared, base):
    """KL(base ‖ fine-tuned) per position of the general text, by torch's own kl_div; the general questions'
    picks by transformers' own loss over each choice's tokens after "Question: …\nAnswer:" (the question masked)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def picks(model_dir):
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        doc = json.loads((ASSETS / GENERAL_CHOICES).read_text())
        right = 0
        for it in doc["items"]:
            head = f"Question: {it['question']}\nAnswer:"
            losses = []
            for c in it["choices"]:
                ids = tok(head + f" {c}", add_special_tokens=False, return_tensors="pt").input_ids
                labels = ids.clone()
                labels[0, : len(tok(head, add_special_tokens=False).input_ids)] = -100
                with torch.no_grad():
                    losses.append(float(model(input_ids=ids, labels=labels).loss))
            right += min(range(len(losses)), key=losses.__getitem__) == it["answer"]
        return 100.0 * right / len(doc["items"])

    out, result = compared["out"], compared["result"]
    base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(base)
    ids = tok((ASSETS / GENERAL_TEXT).read_text(), add_special_tokens=False, return_tensors="pt").input_ids
    ids = ids[:, : base_model.config.max_position_embeddings]
    with torch.no_grad():
        p = torch.log_softmax(base_model(ids).logits[0].double(), -1)
    for run in result["runs"]:
        tuned_dir = out / "runs" / f"{run['method']}-s0" / ".edgeq" / "merge" / "model"
        tuned = AutoModelForCausalLM.from_pretrained(tuned_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            q = torch.log_softmax(tuned(ids).logits[0].double(), -1)
        kld = torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(-1).mean()
        assert run["general_kld"] == pytest.approx(float(kld), rel=1e-6) and run["general_kld"] > 0
        assert run["general_tokens"] == ids.shape[1]
        assert run["general_accuracy"] == pytest.approx(picks(tuned_dir))
    assert result["runs"][0]["general_accuracy_base"] == pytest.approx(picks(base))


def _run(method, seed, task, served, rss, lr=1e-3):
    return {
        "method": method,
        "seed": seed,
        "lr": lr,
        "task_float": task,
        "task_served": served,
        "task_base": 10.0,
        "metric": "json",
        "answer_nll_float": 0.5,
        "finetune_peak_rss_mib": rss,
        "finetune_seconds": 60.0,
        "trainable_params": 7,
        "general_kld": 0.01,
        "general_accuracy": 50.0,
        "general_accuracy_base": 60.0,
    }


def test_the_ratios_and_the_table_are_of_the_runs_own_figures(compared):
    """Two seeds of full (80, 70 → mean 75) and LoRA (72, 78 → 75), one of QLoRA (60): LoRA / full 1.00, QLoRA /
    full 0.80; memory QLoRA 1000 / LoRA (2000, 3000 → 2500) = 0.40. Cells show the mean and the seeds' range."""
    from edgeq.compare import markdown, summarize

    runs = [_run("full", 0, 80.0, 78.0, 9000), _run("full", 1, 70.0, 66.0, 9000), _run("lora", 0, 72.0, 72.0, 2000),
            _run("lora", 1, 78.0, 72.0, 3000), _run("qlora", 0, 60.0, 54.0, 1000)]  # fmt: skip
    s = summarize(runs)
    assert s["methods"]["full"]["task_float"] == {"mean": 75.0, "min": 70.0, "max": 80.0}
    assert s["ratios"]["lora_over_full_task_float"] == pytest.approx(1.0)
    assert s["ratios"]["qlora_over_full_task_float"] == pytest.approx(0.8)
    assert s["ratios"]["qlora_over_full_task_served"] == pytest.approx(54 / 72)
    assert s["ratios"]["qlora_over_lora_memory"] == pytest.approx(0.4)
    md = markdown(s, runs, {"data": "d", "test_data": "t", "base": "b", "profile": "p", "cpu": "c", "date": "x"})
    assert "| full fine-tune | 2 | 0.001 | 7 | 75.0 (70.0–80.0) | 72.0 (66.0–78.0) |" in md
    assert "| QLoRA (NF4 base) | 1 | 0.001 | 7 | 60.0 | 54.0 |" in md
    assert "LoRA / full 1.00 / 1.00, QLoRA / full 0.80 / 0.75; QLoRA / LoRA fine-tune memory 0.40" in md
    assert summarize(runs[-1:])["ratios"]["qlora_over_full_task_float"] is None  # no full run: no ratio
    out = compared["out"]
    assert (out / "methods.png").read_bytes()[:4] == b"\x89PNG"
    assert "fine-tuning methods compared" in compared["stdout"]


def test_a_second_call_resumes_and_does_no_work(compared):
    out = compared["out"]
    before = {p: p.stat().st_mtime_ns for p in (out / "results").iterdir()}
    r = run_edgeq(*compared["args"], timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "results").iterdir()} == before
    assert json.loads((out / "methods.json").read_text())["runs"] == compared["result"]["runs"]

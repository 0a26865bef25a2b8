"""build: outputs, stage caching, a changed profile, the lock, --dry-run and kill -9 resume (tiny model)."""

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edgeq.errors import EdgeqError
from edgeq.profiles import load_profile
from edgeq.spec import BUILD_SCORES_DIR, BUILD_STATE_DIR, FORMATS, GGUF_FLOAT_TYPES, QUANT_TYPES
from tests.conftest import UNBREACHABLE_LATENCY, cpu_seconds_of_children, make_tiny_model, run_edgeq

pytestmark = pytest.mark.slow
DRONE = Path(__file__).parent.parent / "examples" / "drone"


def _profile(
    path: Path, memory: int = 512, quants=("Q8_0", "Q4_K_M", "int4-block32"), max_kld: float = 0.1, **latency
) -> Path:
    """The drone profile with three candidate types, so a tiny build stays quick; latency budgets out of reach
    (UNBREACHABLE_LATENCY) unless a test about a latency gate sets its own."""
    src = load_profile("drone")
    p = {
        "name": "mini",
        "description": "drone budgets, three candidates",
        "memory_budget_mib": memory,
        "storage_budget_mib": src.storage_budget_mib,
        "max_context_tokens": src.max_context_tokens,
        "threads": src.threads,
        "formats": [f for f in FORMATS if any(QUANT_TYPES[q].fmt == f for q in quants)],
        "allowed_quant_types": list(quants),
        "latency": {"prompt_tokens": 128, **UNBREACHABLE_LATENCY, **latency},
        "quality": {"max_mean_kld": max_kld, "max_task_accuracy_drop_points": 100},
        "rationale": dict(src.rationale),
    }
    path.write_text(yaml.safe_dump(p))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, default_model, small_data):
    root = tmp_path_factory.mktemp("build")
    base = make_tiny_model(root / "base", default_model, max_position_embeddings=2048)
    test = root / "test.jsonl"
    test.write_text("".join((DRONE / "test.jsonl").read_text().splitlines(keepends=True)[:4]))
    return {"root": root, "base": base, "data": small_data, "test": test, "profile": _profile(root / "mini.yaml")}


def _args(s, out, profile=None):
    return [
        "build",
        "--profile",
        profile or s["profile"],
        "--base",
        s["base"],
        "--data",
        s["data"],
        "--test-data",
        s["test"],
        "--max-steps",
        2,
        "--reps",
        1,
        "--out",
        out,
    ]


def _states(stdout: str) -> dict:
    rows = [line.split("│") for line in stdout.splitlines() if line.count("│") == 4]
    return {
        r[1].strip(): r[2].strip()
        for r in rows
        if r[1].strip() in ("finetune", "merge", "plan", "sweep", "export", "eval", "bench", "report")
    }


@pytest.fixture(scope="module")
def built(setup):
    out = setup["root"] / "out"
    r = run_edgeq(*_args(setup, out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


MODELFILE = (
    "# Ollama Modelfile written by edgeq {version} for profile mini: the artifact as it was scored.\n"
    "FROM ./model.Q8_0.gguf\n"
    "# The model's template is ChatML (checked by rendering a conversation both ways).\n"
    'TEMPLATE """{{{{- range .Messages }}}}<|im_start|>{{{{ .Role }}}}\n{{{{ .Content }}}}<|im_end|>\n{{{{ end }}}}'
    '<|im_start|>assistant\n"""\n'
    "# The default system prompt (training data: opens 48 of 48 training conversations (100%)).\n"
    'SYSTEM """You control a drone. Reply with one JSON action."""\n'
    "# Generation ends at eos and at the token the template ends a turn with, as in the evaluation.\n"
    'PARAMETER stop "<|im_end|>"\n'
    "# The profile's context window and CPU threads.\n"
    "PARAMETER num_ctx 1024\n"
    "PARAMETER num_thread 2\n"
    "# Greedy decoding: edgeq measured the task score with it.\n"
    "PARAMETER temperature 0\n"
)


def test_outputs(setup, built):
    from edgeq import __version__
    from edgeq.io import sha256_file
    from edgeq.runtime import chat

    names = {p.name for p in built.iterdir()}
    assert {"model.Q8_0.gguf", "Modelfile", "manifest.json", "report.md", "candidates.png"} <= names
    assert (built / "Modelfile").read_text() == MODELFILE.format(version=__version__)
    m = json.loads((built / "manifest.json").read_text())
    # Q8_0 rounds every weight alike: no importance matrix is computed, and none is claimed
    assert m["quant_recipe"]["quant"] == "Q8_0" and m["quant_recipe"]["imatrix_source"] is None
    assert not list((built / BUILD_STATE_DIR).glob("imatrix-*"))
    assert m["inputs"]["data"]["sha256"] == sha256_file(setup["data"])
    assert m["inputs"]["test_data"]["sha256"] == sha256_file(setup["test"])
    assert m["inputs"]["base"]["sha256"]["model.safetensors"] == sha256_file(setup["base"] / "model.safetensors")
    assert m["artifact"]["sha256"] == sha256_file(built / "model.Q8_0.gguf")
    assert m["system_prompt"]["text"] == "You control a drone. Reply with one JSON action."
    assert m["fidelity"]["task_served"]["n"] == 4 and m["runtime_config"]["llama_cpp"]
    # served as scored: the GGUF's own template now carries the training prompt for a user-only request
    from gguf import GGUFReader

    template = GGUFReader(built / "model.Q8_0.gguf").fields["tokenizer.chat_template"].contents()
    assert "You control a drone. Reply with one JSON action." in template
    assert chat(built / "model.Q8_0.gguf", [[{"role": "user", "content": "land"}]], 4)[0]["completion_tokens"] > 0
    assert m["footprint"]["measured_peak_rss_mib"] > 0 and m["footprint"]["predicted_peak_rss_mib"] > 0
    assert set(m["stages"]) == {"finetune", "merge", "plan", "sweep", "export", "eval", "bench", "report"}
    assert (built / "candidates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Candidates" in (built / "report.md").read_text()


def test_rebuild_with_nothing_changed_does_no_work(setup, built):
    before = (built / "model.Q8_0.gguf").stat().st_mtime_ns
    t = cpu_seconds_of_children()
    r = run_edgeq(*_args(setup, built))
    assert r.returncode == 0, r.stderr[-2000:]
    assert cpu_seconds_of_children() - t <= 10  # CPU time, not wall time: a loaded machine does not fail it
    assert _states(r.stdout) == dict.fromkeys(_STAGES, "cached")
    assert (built / "model.Q8_0.gguf").stat().st_mtime_ns == before


def test_changed_profile_reruns_from_plan(setup, built, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(built, out)
    scores = out / BUILD_STATE_DIR / BUILD_SCORES_DIR
    (base_memo,) = scores.glob("base-*.json")
    base_memo.write_text('{"metric": "json", "why"')  # a torn cache entry is scored again, not trusted
    r = run_edgeq(*_args(setup, out, _profile(tmp_path / "mini.yaml", memory=600)))
    assert r.returncode == 0, r.stderr[-2000:]
    states = _states(r.stdout)
    assert states["finetune"] == states["merge"] == "cached"
    assert all(states[s] == "done" for s in ("plan", "sweep", "export", "eval", "bench", "report"))
    # the float models do not depend on the profile: the merged model's score is kept, the torn one redone
    assert "merged model's task score: kept" in r.stderr and "base model's task score: kept" not in r.stderr
    before, after = (json.loads((d / "manifest.json").read_text())["task"] for d in (built, out))
    assert after["merged"] == before["merged"] and after["base"] == before["base"]
    assert after["answer_nll"]["merged"] == before["answer_nll"]["merged"]


def test_second_build_into_the_same_directory_is_refused(setup, built):
    with open(built / ".edgeq" / "lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = run_edgeq(*_args(setup, built))
    assert r.returncode == 2
    assert "another edgeq build" in r.stderr and "--out" in r.stderr


def test_dry_run_touches_nothing(setup, tmp_path):
    out = tmp_path / "never"
    r = run_edgeq(*_args(setup, out), "--dry-run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "would run" in r.stdout and "plan for mini" in r.stdout
    assert "fine-tune on a CPU (predicted)" in r.stdout and "peak RSS" in r.stdout
    assert not out.exists()


def test_killed_build_resumes_to_the_same_artifact(setup, built, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edgeq", *map(str, _args(setup, out))]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / ".edgeq" / "sweep.partial").exists() and time.time() < deadline:
        time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "manifest.json").exists()
    r = run_edgeq(*_args(setup, out))
    assert r.returncode == 0, r.stderr[-2000:]
    states = _states(r.stdout)
    assert states["finetune"] == "cached" and states["sweep"] == "done"
    assert (out / "model.Q8_0.gguf").read_bytes() == (built / "model.Q8_0.gguf").read_bytes()


def test_first_fit_builds_only_until_a_candidate_meets_every_budget(built):
    rows = json.loads((built / ".edgeq" / "sweep" / "stage.json").read_text())["result"]["candidates"]
    assert [c["quant"] for c in rows if c.get("measured")] == ["Q8_0"]  # first in expected quality, and it fits
    assert {c["kld_source"] for c in rows if c["quant"] != "Q8_0"} == {"prior"}
    assert "| not built | gguf Q8_0 came first in expected quality" in (built / "report.md").read_text()


def test_sweep_all_measures_every_candidate_and_plan_ranks_by_it(setup, built, tmp_path):
    import shutil

    out = tmp_path / "all"
    shutil.copytree(built, out)
    r = run_edgeq(*_args(setup, out), "--sweep", "all")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _states(r.stdout)["plan"] == "cached" and _states(r.stdout)["sweep"] == "done"
    r = run_edgeq(
        "plan",
        "--profile",
        setup["profile"],
        "--model",
        out / ".edgeq" / "merge" / "model",
        "--measured-from",
        out,
        "--json",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)["candidates"]
    assert {c["kld_source"] for c in rows} == {"measured"}
    assert all(c["decode_tok_s"] > 0 for c in rows)
    r = run_edgeq("plan", "--profile", setup["profile"], "--measured-from", setup["root"])
    assert r.returncode == 2 and "no finished candidate sweep" in r.stderr


def _dry_states(stdout: str) -> dict:
    rows = [line.split("│") for line in stdout.splitlines() if line.count("│") == 3]
    return {r[1].strip(): r[2].strip() for r in rows if r[1].strip() in set(_STAGES)}


_STAGES = ("finetune", "merge", "plan", "sweep", "export", "eval", "bench", "report")


def test_a_deleted_or_edited_artifact_is_restored_from_the_cache(setup, built, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(built, out)
    cached_artifact = out / ".edgeq" / "export" / "model.Q8_0.gguf"
    sha = json.loads((out / "manifest.json").read_text())["artifact"]["sha256"]
    (out / "model.Q8_0.gguf").unlink()
    r = run_edgeq(*_args(setup, out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert _states(r.stdout)["report"] == "done" and _states(r.stdout)["export"] == "cached"
    with open(out / "model.Q8_0.gguf", "ab") as f:  # an edit in place: the cache must not change with it
        f.write(b"tampered")
    from edgeq.io import sha256_file

    assert sha256_file(cached_artifact) == sha
    r = run_edgeq(*_args(setup, out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert sha256_file(out / "model.Q8_0.gguf") == sha


def test_every_input_keys_its_stages(setup, built, tmp_path):
    import shutil

    def states(**change):
        s = {**setup, **change}
        r = run_edgeq(*_args(s, built), "--dry-run")
        assert r.returncode == 0, r.stderr[-2000:]
        return _dry_states(r.stdout)

    assert set(states().values()) == {"cached"}
    base = shutil.copytree(setup["base"], tmp_path / "base")
    (base / "chat_template.jinja").write_text((base / "chat_template.jinja").read_text().replace("SmolLM", "Smol"))
    assert states(base=base)["finetune"] == "would run"  # not only the weights key the base
    data = tmp_path / "train.jsonl"
    data.write_text(setup["data"].read_text().replace("meters", "metres"))
    assert states(data=data)["finetune"] == "would run"
    test = tmp_path / "test.jsonl"
    test.write_text("".join((DRONE / "test.jsonl").read_text().splitlines(keepends=True)[4:8]))
    got = states(test=test)
    assert got["eval"] == "would run" and all(got[s] == "cached" for s in ("finetune", "merge", "plan", "sweep"))
    r = run_edgeq(*[a if a != 2 else 3 for a in _args(setup, built)], "--dry-run")
    assert _dry_states(r.stdout)["finetune"] == "would run"  # --max-steps 3
    r = run_edgeq(*_args(setup, built), "--method", "lora", "--dry-run")
    assert _dry_states(r.stdout)["finetune"] == "would run"


def test_a_full_fine_tune_builds_with_its_own_model_where_a_merge_would_be(setup, tmp_path):
    """--method full: the merge stage takes the fine-tune's model as it is (the template given the system prompt),
    and the artifact is that model quantized: the rest of the chain is unchanged."""
    from safetensors.torch import load_file

    out = tmp_path / "full"
    r = run_edgeq(*[a if a != 2 else 1 for a in _args(setup, out)], "--method", "full")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["finetune"]["method"] == "full" and m["finetune"]["trainable_params"] == m["finetune"]["total_params"]
    assert m["merge"]["verification"] is None and m["merge"]["config"]["merge_into"] == "none"
    trained, adopted = (
        load_file(str(out / ".edgeq" / s / "model" / "model.safetensors")) for s in ("finetune", "merge")
    )
    assert trained.keys() == adopted.keys() and all(trained[k].equal(adopted[k]) for k in trained)
    base = load_file(str(setup["base"] / "model.safetensors"))
    assert not any(base[k].float().equal(adopted[k].float()) for k in base)  # every weight trained
    assert "You control a drone" in (out / ".edgeq" / "merge" / "model" / "chat_template.jinja").read_text()
    assert "| fine-tuned (every weight, float32) |" in (out / "report.md").read_text()


def test_a_free_text_task_builds_end_to_end_with_a_held_out_split(setup, tmp_path):
    data = Path(__file__).parent.parent / "examples" / "maintenance" / "train.jsonl"
    out = tmp_path / "maintenance"
    args = ["build", "--profile", setup["profile"], "--base", setup["base"], "--data", data]
    r = run_edgeq(*args, "--max-steps", 6, "--reps", 1, "--out", out)
    assert r.returncode in (0, 3), r.stderr[-3000:]  # a 6-step tiny model may miss the quality budget: a result
    assert "held out (seed 0)" in r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["inputs"]["holdout"] == {"source": str(data), "train": 194, "held_out": 22, "seed": 0}
    assert m["task"]["metric"] == "chrf" and "free-text" in m["task"]["metric_why"]
    nll = m["task"]["answer_nll"]
    assert nll["merged"]["mean_nll"] < nll["base"]["mean_nll"]  # the fine-tune learnt the answers
    assert nll["merged"]["tokens"] > 200 and abs(nll["artifact"]["mean_nll"] - nll["merged"]["mean_nll"]) < 0.5
    agree = m["task"]["agreement_with_merged"]
    assert agree["n"] == 22 and 0 <= agree["identical_pct"] <= agree["prefix_agreement_pct"] <= 100
    assert "Metric: **chrf**" in (out / "report.md").read_text()


def test_a_budget_breached_at_bench_exits_3_with_the_report_written(setup, built, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(built, out)
    r = run_edgeq(
        *_args(setup, out, _profile(tmp_path / "slow.yaml", quants=["Q8_0"], ttft_ms=1, prompt_tokens=512))
    )  # tiny: ~19 ms
    assert r.returncode == 3, r.stderr[-2000:]
    assert "ttft" in r.stderr and "report.md" in r.stderr and "Traceback" not in r.stderr
    result = next(ln for ln in (out / "report.md").read_text().splitlines() if ln.startswith("**Result:"))
    # another budget may breach too on a slower or busier machine (the test shares it): ttft must be among them
    assert result.startswith("**Result: budget breached** — "), result
    assert re.search(r"ttft [0-9.]+ ms vs max 1\b", result), result
    m = json.loads((out / "manifest.json").read_text())
    assert m["profile"]["ttft_ms"] == 1  # the outputs are this build's, breach and all (the sweep does not judge TTFT)


def test_a_served_score_that_drops_past_the_budget_exits_3_with_report_and_manifest_written(setup, tmp_path):
    """The quality gate seen failing inside a build. A base of weights with std 0.1 (its greedy answers follow the
    prompt), references that are its own answers (a 2-step fine-tune barely moves them: chrF near 100 for the
    merged model), one 4-bit candidate whose served answers differ, and no drop allowed. The served score is chrF
    of those answers, recomputed here with sacrebleu; the gate's drop is merged minus served."""
    from sacrebleu.metrics import CHRF

    from edgeq.task import generate_hf, load_task

    base = make_tiny_model(tmp_path / "base", setup["base"], initializer_range=0.1, max_position_embeddings=2048)
    prompts = load_task(setup["test"]).prompts
    own = generate_hf(base, prompts, 24)
    assert all(a.strip() for a in own), own
    test = tmp_path / "own-answers.jsonl"
    test.write_text(
        "".join(
            json.dumps({"messages": [*p, {"role": "assistant", "content": a}]}) + "\n"
            for p, a in zip(prompts, own, strict=True)
        )
    )
    profile = yaml.safe_load(setup["profile"].read_text())
    profile |= {"allowed_quant_types": ["Q4_K_M"], "formats": ["gguf"]}
    profile["quality"] = {"max_mean_kld": 10, "max_task_accuracy_drop_points": 0}
    (tmp_path / "strict.yaml").write_text(yaml.safe_dump(profile))
    out = tmp_path / "out"
    r = run_edgeq(*_args({**setup, "base": base, "test": test}, out, tmp_path / "strict.yaml"), "--metric", "chrf")
    assert r.returncode == 3, r.stderr[-2000:]
    assert "task_drop" in r.stderr and "report.md" in r.stderr and "Traceback" not in r.stderr
    m = json.loads((out / "manifest.json").read_text())
    ev = json.loads((out / BUILD_STATE_DIR / "eval" / "stage.json").read_text())["result"]
    assert m["task"]["metric"] == "chrf" and m["task"]["merged"] == ev["merged"]["score"]
    assert ev["merged"]["score"] == pytest.approx(CHRF().corpus_score(ev["merged"]["answers"], [own]).score)
    served = m["fidelity"]["task_served"]["score"]
    assert served == pytest.approx(CHRF().corpus_score(ev["served"]["answers"], [own]).score, abs=1e-9)
    drop = {c["name"]: c for c in m["quality_checks"]}["task_drop"]
    assert drop["measured"] == pytest.approx(m["task"]["merged"] - served) and drop["measured"] > 0
    assert not drop["passed"] and (out / "model.Q4_K_M.gguf").is_file()
    # Q4_K_M weighs its rounding by the training data's importance matrix: computed once, and said
    assert Path(m["quant_recipe"]["imatrix_source"]).samefile(setup["data"])
    assert len(list((out / BUILD_STATE_DIR).glob("imatrix-*.safetensors"))) == 1
    assert "task_drop" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("gate", "budget"),
    [("decode", {"min_decode_tok_s": 100000}), ("kld", {"max_kld": 1e-6})],  # tiny: ~1500 tok/s, Q4_K_M KLD ≫ 1e-6
)
def test_no_candidate_fitting_at_the_sweep_exits_3_and_keeps_the_previous_outputs(setup, built, tmp_path, gate, budget):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(built, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    r = run_edgeq(*_args(setup, out, _profile(tmp_path / "strict.yaml", quants=["Q4_K_M"], **budget)))
    assert r.returncode == 3, r.stderr[-2000:]
    assert "no candidate fits profile mini" in r.stderr and "Traceback" not in r.stderr
    assert re.search(rf"misses {gate} [0-9.e+-]+ [<>] [0-9.e+-]+ ", r.stderr, re.IGNORECASE), r.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_build_killed_in_the_fine_tune_resumes_from_its_checkpoint(setup, tmp_path):
    from edgeq.finetune import CKPT_DIR, CKPT_MARKER

    out = tmp_path / "out"
    # one candidate, and a decode budget none meets: the resumed build stops at the sweep (exit 3)
    one = _profile(tmp_path / "one.yaml", quants=["Q8_0"], min_decode_tok_s=100000)
    args = [a if a != 2 else 60 for a in _args(setup, out, one)]  # --max-steps 60: checkpoints at 25 and 50
    p = subprocess.Popen(
        [sys.executable, "-m", "edgeq", *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    marker = out / ".edgeq" / "finetune.partial" / CKPT_DIR / "step-000025" / CKPT_MARKER
    deadline = time.time() + 600
    while not marker.exists():
        assert p.poll() is None and time.time() < deadline, "the build ended before it could be killed"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / ".edgeq" / "finetune").exists()
    r = run_edgeq(*args)
    assert r.returncode == 3 and "no candidate fits profile mini" in r.stderr, r.stderr[-2000:]
    assert "resuming from step-0000" in r.stderr
    ft = json.loads((out / ".edgeq" / "finetune" / "stage.json").read_text())["result"]
    assert ft["resumed_from_step"] in (25, 50) and ft["steps_run"] == 60 - ft["resumed_from_step"]


def test_a_same_size_edit_in_place_with_its_mtime_put_back_is_a_new_input(tmp_path):
    """The memo that spares a rebuild re-reading weights must not hide an edit: same size, same mtime."""
    from edgeq.build import file_sha

    data, memo = tmp_path / "train.jsonl", {}
    data.write_text('{"prompt": "go up", "response": "up"}\n')
    before, st = file_sha(data, memo), data.stat()
    time.sleep(0.01)
    data.write_text('{"prompt": "go dn", "response": "dn"}\n')
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert data.stat().st_size == st.st_size and data.stat().st_mtime_ns == st.st_mtime_ns
    assert file_sha(data, memo) != before


@pytest.mark.parametrize("quant", [q for q in QUANT_TYPES if q not in GGUF_FLOAT_TYPES])
def test_an_export_takes_an_importance_matrix_exactly_where_the_build_hands_it_one(quant, tmp_path):
    """The build quantizes with the matrix only where Candidate.uses_imatrix; every export refuses one elsewhere
    (the Jetson profile's sweep once reached ONNX int8 with the plan's matrix: exit 2 mid-build, 1.24B model,
    2026-12-06), and accepts one wherever the build hands it one (it fails later here: there is no model)."""
    from edgeq.export.gguf import GgufExport, export_gguf
    from edgeq.export.onnx import OnnxExport, export_onnx
    from edgeq.records import Candidate

    row = QUANT_TYPES[quant]
    export, cfg = (export_gguf, GgufExport) if row.fmt == "gguf" else (export_onnx, OnnxExport)
    matrix = tmp_path / "imatrix.safetensors"
    with pytest.raises(EdgeqError) as e:
        export(cfg(model=str(tmp_path / "absent"), out=str(tmp_path / "out"), quant=quant, imatrix=str(matrix)))
    assert ("rounds every weight alike" not in e.value.what) == Candidate(row.fmt, quant).uses_imatrix

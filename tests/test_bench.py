"""`edgeq bench`: fresh-process measurements, outputs, profile and baseline gates, bad input."""

import csv
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from edgeq.bench import check_baseline
from edgeq.export.gguf import GgufExport, export_gguf
from edgeq.profiles import load_profile
from edgeq.records import Stats
from edgeq.spec import BENCH_SCHEMA, EXIT_BUDGET, EXIT_USAGE
from tests.conftest import UNBREACHABLE_LATENCY, run_edgeq

FAST = ("--reps", 2, "--prompt-tokens", 32, "--gen-tokens", 8)


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny.gguf"
    export_gguf(GgufExport(model=str(tiny_model), out=str(out), quant="Q8_0"))
    return out


def test_json_record_has_schema_environment_and_stats(tiny_gguf, tmp_path):
    r = run_edgeq("bench", tiny_gguf, *FAST, "--output", "json", "--out", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "b.json").read_text())
    assert rec["schema"] == BENCH_SCHEMA and rec["backend"] == "llama.cpp"
    env = rec["environment"]
    assert len(env["artifact_sha256"]) == 64 and env["cores"] >= 1 and env["libraries"]["llama_cpp"]
    for metric in ("load_s", "ttft_ms", "prefill_tok_s", "decode_tok_s", "e2e_s", "peak_rss_mib"):
        st = rec["results"][metric]
        assert st["n"] == 2 and st["min"] <= st["median"] and st["min"] > 0
    assert "repetition" in r.stderr and r.stdout == ""  # human text on stderr, the record in --out


def test_markdown_csv_and_junit(tiny_gguf, tmp_path):
    md = run_edgeq("bench", tiny_gguf, *FAST)
    assert md.returncode == 0, md.stderr
    assert "| pp32 |" in md.stdout and "| tg8 |" in md.stdout and "±" in md.stdout
    cs = run_edgeq("bench", tiny_gguf, *FAST, "--output", "csv")
    assert cs.returncode == 0, cs.stderr
    rows = list(csv.DictReader(io.StringIO(cs.stdout)))
    assert {r["metric"] for r in rows} >= {"decode_tok_s", "peak_rss_mib"}
    jx = run_edgeq("bench", tiny_gguf, *FAST, "--output", "junit", "--profile", _profile(tmp_path))
    assert jx.returncode == 0, jx.stderr  # a tiny model fits the drone's memory and storage with room to spare
    suite = ET.fromstring(jx.stdout)
    assert {c.get("name") for c in suite.iter("testcase")} == {"memory", "storage", "decode"}  # ttft: other length
    assert suite.get("failures") == "0" and not list(suite.iter("failure"))


def _profile(tmp_path, **changes):
    """The drone profile with some budgets replaced (nested sections merged, not replaced); its latency budgets
    start out of reach (UNBREACHABLE_LATENCY)."""
    d = yaml.safe_load(Path(load_profile("drone").source).read_text())
    d["latency"] |= UNBREACHABLE_LATENCY
    for key, value in changes.items():
        d[key] = {**d[key], **value} if isinstance(value, dict) else value
    p = tmp_path / "tight.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_memory_breach_exits_3_and_names_the_limit(tiny_gguf, tmp_path):
    profile = _profile(tmp_path, memory_budget_mib=16)
    r = run_edgeq("bench", tiny_gguf, *FAST, "--profile", profile, "--output", "junit", "--out", tmp_path / "j.xml")
    assert r.returncode == EXIT_BUDGET
    assert "memory" in r.stderr and "memory" in r.stderr and "vs max 16" in r.stderr and "Traceback" not in r.stderr
    failures = [c for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failures] == ["memory"]


def test_baseline_regression_exits_3(tiny_gguf, tmp_path):
    assert run_edgeq("bench", tiny_gguf, *FAST, "--output", "json", "--out", tmp_path / "base.json").returncode == 0
    base = json.loads((tmp_path / "base.json").read_text())
    base["results"]["decode_tok_s"]["median"] *= 1000  # the old build was 1000x faster: no load makes up for it
    (tmp_path / "base.json").write_text(json.dumps(base))
    r = run_edgeq("bench", tiny_gguf, *FAST, "--baseline", tmp_path / "base.json")
    assert r.returncode == EXIT_BUDGET and "baseline_decode_tok_s" in r.stderr


@pytest.mark.parametrize(
    "budget, changes, prompt",
    [
        ("storage", {"storage_budget_mib": 1}, 32),  # the tiny Q8_0 is 5.0 MiB
        ("decode", {"latency": {"min_decode_tok_s": 100000}}, 32),  # measured 1400-1800 tok/s
        ("ttft", {"latency": {"ttft_ms": 1, "prompt_tokens": 512}}, 512),  # 19 ms measured at 512 tokens
    ],
)
def test_each_budget_breach_exits_3_and_fails_only_its_check(budget, changes, prompt, tiny_gguf, tmp_path):
    profile = _profile(tmp_path, **changes)
    args = ("--reps", 1, "--prompt-tokens", prompt, "--gen-tokens", 8, "--profile", profile)
    r = run_edgeq("bench", tiny_gguf, *args, "--output", "junit", "--out", tmp_path / "j.xml")
    assert r.returncode == EXIT_BUDGET, r.stderr
    failures = [c for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failures] == [budget]


def test_a_baseline_within_tolerance_passes(tiny_gguf, tmp_path):
    assert run_edgeq("bench", tiny_gguf, *FAST, "--output", "json", "--out", tmp_path / "base.json").returncode == 0
    base = json.loads((tmp_path / "base.json").read_text())
    # the old build was 1000x slower and bigger: no regression however busy the machine (a CI run on 2 shared
    # cores measured prefill 57 % below the run before it, failing a 2x margin); the tolerance's own arithmetic is
    # test_baseline_threshold_is_the_tolerance_in_the_worse_direction's
    for metric, factor in (("decode_tok_s", 0.001), ("prefill_tok_s", 0.001), ("peak_rss_mib", 1000.0)):
        base["results"][metric]["median"] *= factor
    (tmp_path / "base.json").write_text(json.dumps(base))
    r = run_edgeq("bench", tiny_gguf, *FAST, "--baseline", tmp_path / "base.json")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "metric, change, passed",
    [
        ("decode_tok_s", -4.9, True),
        ("decode_tok_s", -5.1, False),
        ("prefill_tok_s", -5.1, False),
        ("peak_rss_mib", 4.9, True),
        ("peak_rss_mib", 5.1, False),
        ("peak_rss_mib", -30.0, True),
        ("decode_tok_s", 30.0, True),
    ],
)
def test_baseline_threshold_is_the_tolerance_in_the_worse_direction(metric, change, passed):
    base = {"decode_tok_s": 100.0, "prefill_tok_s": 100.0, "peak_rss_mib": 100.0}
    results = {m: Stats(v, 0.0, v, v, 1, (v,)) for m, v in base.items()}
    results[metric] = Stats(100.0 + change, 0.0, 100.0 + change, 100.0 + change, 1, (100.0 + change,))
    (check,) = [c for c in check_baseline(results, base, 5.0) if c.name == f"baseline_{metric}"]
    assert check.passed is passed and check.measured == pytest.approx(change)
    others = [c for c in check_baseline(results, base, 5.0) if c.name != f"baseline_{metric}"]
    assert all(c.passed for c in others)


BAD_INPUT = {  # case → (arguments, what its one line must say)
    "missing": (["nope.gguf"], "nope.gguf: artifact not found — pass a .gguf file or an ONNX GenAI folder"),
    "unknown": (["model.bin"], "model.bin: unknown artifact format — expected a .gguf file or a folder"),
    "lying": (["lie.gguf"], "lie.gguf: not a valid GGUF file: tensor '' has 0 dimensions"),
    "onnx-no-config": (["onnx"], "onnx: not an ONNX Runtime GenAI model folder (no genai_config.json)"),
    "bad-profile": (["TINY", "--profile", "bad.yaml"], "memory_budget_mib: '4GB' looks like a number with a unit"),
    "bad-baseline": (["TINY", *FAST, "--baseline", "bad.json"], "bad.json: not an edgeq bench JSON"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_exit_2(case, tiny_gguf, tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0" * 64)
    (tmp_path / "lie.gguf").write_bytes(
        b"GGUF" + (3).to_bytes(4, "little") + (5).to_bytes(8, "little") + (0).to_bytes(8, "little") + b"\0" * 16
    )
    (tmp_path / "onnx").mkdir()
    (tmp_path / "bad.yaml").write_text("name: x\nmemory_budget_mib: 4GB\n")
    (tmp_path / "bad.json").write_text("{}")
    args, message = BAD_INPUT[case]
    r = run_edgeq("bench", *[tiny_gguf if a == "TINY" else a for a in args], cwd=tmp_path)
    assert r.returncode == EXIT_USAGE, r.stderr
    assert r.stderr.startswith("error: ") and message in r.stderr and "Traceback" not in r.stderr


def _stat(*samples: float) -> Stats:
    ordered = sorted(samples)
    return Stats(sum(samples) / len(samples), 0.0, ordered[0], ordered[len(ordered) // 2], len(samples), samples)


def test_the_memory_gate_reads_the_worst_repetition_and_a_nan_measurement_fails():
    from edgeq.bench import check_budgets

    profile = load_profile("drone")
    budget = profile.memory_budget_mib
    results = {
        "memory_mib": _stat(budget - 50, budget + 10, budget - 40),  # median and mean under, one repetition over
        "decode_tok_s": _stat(float("nan")),
        "ttft_ms": _stat(1.0),
    }
    checks = {c.name: c for c in check_budgets(results, {"artifact_bytes": 2**20}, profile, profile.prompt_tokens)}
    assert checks["memory"].measured == budget + 10 and not checks["memory"].passed
    assert not checks["decode"].passed  # NaN is neither above nor below a limit: it fails
    assert checks["storage"].measured == 1.0 and checks["storage"].passed and checks["ttft"].passed
    results["ttft_ms"] = _stat(float("nan"))  # a max check too
    checks = {c.name: c for c in check_budgets(results, {"artifact_bytes": 2**20}, profile, profile.prompt_tokens)}
    assert not checks["ttft"].passed


def test_rates_come_from_the_timed_spans_with_the_first_token_counted_in_the_prompt(monkeypatch):
    """Injected timings: TTFT is the prompt's span and covers the first token, so prefill = prompt / TTFT and
    decode = the n − 1 later tokens / their span; on a CPU the memory gated on is the peak RSS alone."""
    from edgeq import bench

    spans = {"load_s": 0.5, "ttft_s": 0.2, "decode_s": 1.5, "e2e_s": 1.7}
    monkeypatch.setattr(bench, "_measure_gguf", lambda *a, **k: spans)
    monkeypatch.setattr(bench, "peak_rss_mib", lambda: 321.5)
    got = bench.measure("gguf", "unused.gguf", 64, 31, 2, 512)
    assert got["ttft_ms"] == pytest.approx(200) and got["prefill_tok_s"] == pytest.approx(64 / 0.2)
    assert got["decode_tok_s"] == pytest.approx(30 / 1.5) and got["e2e_s"] == 1.7 and got["load_s"] == 0.5
    assert got["peak_rss_mib"] == got["memory_mib"] == 321.5 and got["device_mib"] == 0


def test_repetition_statistics_by_hand():
    """Samples 1, 2, 6: mean 3, sample standard deviation √((4 + 1 + 9) / 2) = √7, min 1, median 2."""
    import math

    from edgeq.bench import _stats

    s = _stats([6.0, 1.0, 2.0])
    assert (s.mean, s.min, s.median, s.n, s.samples) == (3.0, 1.0, 2.0, 3, (6.0, 1.0, 2.0))
    assert s.sd == pytest.approx(math.sqrt(7))
    assert _stats([5.0]).sd == 0.0


def test_bench_loads_adapters_with_their_base_and_times_the_switch(tmp_path, tiny_model, default_model):
    """Two GGUF LoRA adapters on their base: both recorded in the settings, the switch timed in every repetition,
    the record read back whole; one adapter has nothing to switch to; an adapter of another base is refused before
    any repetition runs."""
    from edgeq.bench import BenchConfig, bench
    from edgeq.errors import UsageError
    from edgeq.export.adapter import export_adapter
    from edgeq.export.gguf import write_float_gguf
    from edgeq.records import BenchResult
    from tests.conftest import make_tiny_model
    from tests.export.test_adapter import random_adapter

    base = tmp_path / "base.F32.gguf"
    write_float_gguf(tiny_model, base, "F32")
    adapters = []
    for name, seed in (("survey", 1), ("inspect", 2)):
        run = random_adapter(tiny_model, tmp_path / name, seed)
        adapters.append(
            export_adapter(GgufExport(out=str(tmp_path / f"{name}.gguf"), model=str(tiny_model), adapter=str(run))).path
        )
    settings = {"reps": 2, "prompt_tokens": 16, "gen_tokens": 4}
    r = bench(BenchConfig(artifact=str(base), adapter=tuple(adapters), **settings))
    assert r.settings.adapters == tuple(str(Path(a).resolve()) for a in adapters)
    assert r.results["switch_ms"].n == 2 and all(v > 0 for v in r.results["switch_ms"].samples)
    assert BenchResult.from_dict(json.loads(json.dumps(r.as_dict()))) == r
    assert "switch_ms" not in bench(BenchConfig(artifact=str(base), adapter=tuple(adapters[:1]), **settings)).results
    other = make_tiny_model(tmp_path / "other", default_model, seed=9)
    other_gguf = tmp_path / "other.F32.gguf"
    write_float_gguf(other, other_gguf, "F32")
    with pytest.raises(UsageError, match="not an adapter for this base: trained on base"):
        bench(BenchConfig(artifact=str(other_gguf), adapter=tuple(adapters[:1]), **settings))

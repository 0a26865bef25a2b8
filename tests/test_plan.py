"""plan: storage predicted tensor by tensor, the KV formula, choice and the no-fit message."""

import json
from pathlib import Path

import pytest

from edgeq.footprint import Dims, kv_cache_bytes, onnx_bytes
from tests.conftest import run_edgeq

SMOLLM2 = Dims(
    layers=30,
    hidden=576,
    heads=9,
    kv_heads=3,
    head_dim=64,
    intermediate=1536,
    vocab=49152,
    max_positions=8192,
    tied=True,
)


def test_kv_cache_counts_kv_heads_not_attention_heads():
    # 2 × 30 layers × 3 KV heads × 64 × 2 bytes = 23,040 bytes per token (9 heads would be 3× that)
    assert kv_cache_bytes(SMOLLM2, 1, 2) == 23040
    assert kv_cache_bytes(SMOLLM2, 1024, 2) == 23040 * 1024


def test_onnx_int4_layout_on_the_default_model():
    # per matrix (n rows, k columns, blocks of 32): n·k/2 bytes of levels + n·k/32 fp32 scales + n·⌈k/64⌉ zero
    # point bytes; per layer qkv 354,240 + o 212,544 + gate, up 566,784 each + down 566,784 = 2,267,136 bytes;
    # the tied head at 8 bits: 49152 · 18 blocks · (32 + 4 + 1) = 32,735,232 bytes
    b = onnx_bytes(SMOLLM2, "int4-block32")
    assert b["matmul"] == 30 * 2_267_136 + 32_735_232
    assert b["gather"] == 49152 * 18  # tied: the embedding gathers from the head's blocks, its zero points 2-D
    assert onnx_bytes(SMOLLM2, "int8")["gather"] == 49152 * 576 * 4


def _plan(*args):
    r = run_edgeq("plan", *args)
    return r, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else None)


@pytest.fixture(scope="module")
def tiny_plan(tiny_model):
    r, result = _plan("--profile", "drone", "--model", tiny_model, "--ctx", 256, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    return result


def test_plan_predicts_every_allowed_candidate_and_picks_the_best_gguf(tiny_plan):
    from edgeq.profiles import load_profile

    drone = load_profile("drone")
    assert [(c["format"], c["quant"]) for c in tiny_plan["candidates"]] == [
        (f, q) for f in drone.formats for q in drone.allowed_quant_types if (q[0] in "QI") == (f == "gguf")
    ]
    assert tiny_plan["chosen"] == {"format": "gguf", "quant": "Q8_0"}  # first format, lowest prior KLD
    for c in tiny_plan["candidates"]:
        terms = c["memory_terms_mib"]
        assert c["memory_mib"] >= sum(terms.values()) - 1e-6 and terms["kv_cache"] > 0


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M", "IQ4_XS"])
def test_gguf_size_prediction_matches_the_quantized_file(tiny_plan, tiny_model, tmp_path, quant):
    out = tmp_path / f"{quant}.gguf"
    r = run_edgeq("export", "--model", tiny_model, "--quant", quant, "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    row = next(c for c in tiny_plan["candidates"] if c["quant"] == quant)
    assert abs(row["storage_mib"] * 2**20 - out.stat().st_size) < 8192  # header + per-tensor alignment


def test_onnx_size_prediction_matches_the_export(tiny_plan, tiny_model, tmp_path):
    out = tmp_path / "int4"
    r = run_edgeq("export", "--model", tiny_model, "--format", "onnx", "--quant", "int4-block32", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    row = next(c for c in tiny_plan["candidates"] if c["quant"] == "int4-block32")
    assert abs(row["storage_mib"] * 2**20 / size - 1) < 0.03


def test_no_candidate_fits_says_by_how_much_and_what_would_fit_exit_3(tiny_model, tmp_path):
    import yaml

    from edgeq.profiles import load_profile

    p = load_profile("drone").as_dict()
    p.pop("source")
    p["name"], p["memory_budget_mib"] = "tiny-box", 16
    p = {
        k: v
        for k, v in p.items()
        if k not in ("prompt_tokens", "ttft_ms", "min_decode_tok_s", "max_mean_kld", "max_task_accuracy_drop_points")
    }
    src = load_profile("drone")
    p["latency"] = {
        "prompt_tokens": src.prompt_tokens,
        "ttft_ms": src.ttft_ms,
        "min_decode_tok_s": src.min_decode_tok_s,
    }
    p["quality"] = {
        "max_mean_kld": src.max_mean_kld,
        "max_task_accuracy_drop_points": src.max_task_accuracy_drop_points,
    }
    path = tmp_path / "tiny-box.yaml"
    path.write_text(yaml.safe_dump(p))
    r, _ = _plan("--profile", path, "--model", tiny_model, "--ctx", 256)
    assert r.returncode == 3, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert "no candidate fits profile tiny-box" in err and "misses memory by" in err and "smaller" in err
    assert "Traceback" not in r.stderr


def test_context_longer_than_the_model_is_a_usage_error(tiny_model):
    r, _ = _plan("--profile", "drone", "--model", tiny_model)  # drone: 1024 > the tiny model's 512 positions
    assert r.returncode == 2
    assert "longer than the model's 512 positions" in r.stderr


@pytest.fixture(scope="module")
def long_tiny(tmp_path_factory, default_model):
    from tests.conftest import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("long") / "model", default_model, max_position_embeddings=8192)


SHIPPED = sorted(p.stem for p in (Path(__file__).parent.parent / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_plans_and_dry_run_builds(name, long_tiny, tmp_path):
    r, result = _plan("--profile", name, "--model", long_tiny, "--json")
    assert r.returncode in (0, 3), r.stderr[-2000:]
    assert "internal error" not in r.stderr and result["candidates"]
    notes = {c["quant"]: c["memory_note"] for c in result["candidates"]}
    if "fp16" in notes:  # never measured on a CPU: predicted, and said so
        assert "uncalibrated" in notes["fp16"]
    r = run_edgeq("build", "--profile", name, "--base", long_tiny, "--out", tmp_path / "b", "--dry-run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "would run" in r.stdout and not (tmp_path / "b").exists()


def test_plan_names_its_calibration_and_a_missing_one_is_a_usage_error(tiny_plan, tiny_model):
    assert tiny_plan["calibration"]["name"] and tiny_plan["calibration"]["runtime_config"]["llama_cpp"]
    assert any("names no calibration" in w for w in tiny_plan["calibration"]["warnings"])
    r, _ = _plan("--profile", "drone", "--model", tiny_model, "--ctx", 256, "--calibration", "nowhere.json")
    assert r.returncode == 2 and "calibration 'nowhere.json' not found" in r.stderr


def test_a_named_calibration_is_the_one_the_numbers_come_from(tiny_plan, tiny_model, tmp_path):
    """The machine's calibration with its runtime bases moved (GGUF +100 MiB, ONNX +50 MiB), named with
    --calibration: every candidate's predicted memory moves by exactly that, its base term is the file's."""
    cal = json.loads(Path(tiny_plan["calibration"]["path"]).read_text())
    cal["gguf"]["base_mib"] += 100
    cal["onnx"]["base_mib"] += 50
    named = tmp_path / "device.json"
    named.write_text(json.dumps(cal))
    r, moved = _plan("--profile", "drone", "--model", tiny_model, "--ctx", 256, "--calibration", named, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert moved["calibration"]["path"] == str(named)
    before = {(c["format"], c["quant"]): c for c in tiny_plan["candidates"]}
    assert len(moved["candidates"]) == len(before)
    for c in moved["candidates"]:
        old, fmt = before[c["format"], c["quant"]], c["format"]
        assert c["memory_terms_mib"]["base"] == pytest.approx(cal[fmt]["base_mib"]), c["quant"]
        assert c["memory_terms_mib"]["base"] - old["memory_terms_mib"]["base"] == pytest.approx(
            100 if fmt == "gguf" else 50
        )
        # the rest is the same prediction: every other term the same, exactly, but llama.cpp's buffers, which are
        # measured again on a stand-in in a fresh child and move by a few pages from run to run (52 KiB seen)
        for term, value in c["memory_terms_mib"].items():
            if term == "base":
                continue
            measured = fmt == "gguf" and term in ("kv_cache", "compute")
            want = old["memory_terms_mib"][term]
            assert value == pytest.approx(want, abs=1.0 if measured else 1e-9), (c["quant"], term)
        rest, old_rest = (
            c["memory_mib"] - c["memory_terms_mib"]["base"],
            old["memory_mib"] - old["memory_terms_mib"]["base"],
        )
        assert rest == pytest.approx(old_rest, abs=2.0 if fmt == "gguf" else 1e-9), c["quant"]


def test_the_onnx_mixture_prior_follows_the_measured_curve():
    from edgeq.pricing import interpolate_prior
    from edgeq.spec import ONNX_AUTO_KLD_PRIOR

    pts = sorted(ONNX_AUTO_KLD_PRIOR)
    assert all(abs(interpolate_prior(b) - k) < 1e-12 for b, k in pts)
    (b0, k0), (b1, k1) = pts[-2:]
    assert interpolate_prior((b0 + b1) / 2) == pytest.approx((k0 * k1) ** 0.5)  # log-linear: the geometric mean
    assert interpolate_prior(pts[0][0] - 1) == pts[0][1] and interpolate_prior(pts[-1][0] + 1) == pts[-1][1]
    klds = [interpolate_prior(b / 10) for b in range(40, 120)]
    assert all(a >= b * (1 - 1e-12) for a, b in zip(klds, klds[1:], strict=False))  # more bits: never more drift

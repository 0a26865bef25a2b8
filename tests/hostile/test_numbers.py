"""Every number is validated where it enters: options, profiles, calibrations, measurement files, data and configs.
Finite, in range, of the right type, of bounded length; one line naming the field and the file."""

import json
import shutil

import pytest

from edgeq.calibrate import POINTS_SCHEMA, load_points
from edgeq.calibration import load_calibration, shipped_calibrations
from edgeq.data import read_jsonl
from edgeq.errors import ConfigError, UsageError
from edgeq.io import parse_json, read_json
from edgeq.profiles import load_profile
from edgeq.spec import BUILD_STAGE_RECORD, BUILD_STATE_DIR, ENV_CHILD_TIMEOUT, EXIT_USAGE
from edgeq.sweep import measured_from
from tests.conftest import CALIBRATION_POINT, run_edgeq, sweep_record

HUGE = "1" * 5000  # past Python's 4300-digit limit: int() raises a bare ValueError


def _one_line(r):
    """One error line (progress lines may come before it), no traceback, no internal error."""
    said = [line for line in r.stderr.splitlines() if line.startswith("error")]
    return len(said) == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr


@pytest.fixture
def calibration(tmp_path):
    src = next(p for p in shipped_calibrations() if "epyc" in p.name)
    return json.loads(src.read_text()), tmp_path / "cal.json"


@pytest.mark.parametrize(
    "field, value, said",
    [
        ("base_mib", float("nan"), "NaN is not a number JSON allows"),
        ("base_mib", -512.0, "gguf.base_mib is -512"),
        ("base_mib", "62", "gguf.base_mib must be a number, not str"),
        ("base_mib", True, "gguf.base_mib must be a number, not bool"),
    ],
)
def test_a_calibration_with_a_bad_memory_term_is_refused(calibration, field, value, said):
    cal, path = calibration
    cal["gguf"][field] = value
    path.write_text(json.dumps(cal))
    with pytest.raises(UsageError, match=said) as e:
        load_calibration(path)
    assert e.value.where == str(path)


def test_a_calibration_of_the_fitted_runtime_model_is_refused_naming_the_way_out(calibration):
    cal, path = calibration
    cal["schema"] = "edgeq.calibration/1"
    path.write_text(json.dumps(cal))
    with pytest.raises(UsageError, match=r"schema is 'edgeq.calibration/1'.*run `edgeq calibrate` again"):
        load_calibration(path)


def test_a_negative_resident_factor_and_a_wrong_shape_are_refused(calibration):
    cal, path = calibration
    cal["gguf"]["resident_factor"]["Q4_0"] = -3
    path.write_text(json.dumps(cal))
    with pytest.raises(UsageError, match="gguf.resident_factor.Q4_0 is -3"):
        load_calibration(path)
    path.write_text("[1, 2, 3]")
    with pytest.raises(UsageError, match="must be a mapping, not list"):
        load_calibration(path)
    path.write_text(json.dumps({"gguf": {}}))
    with pytest.raises(UsageError, match="measured_on.cpu is missing"):
        load_calibration(path)


def test_plan_refuses_a_nan_calibration_in_one_line(calibration):
    cal, path = calibration
    cal["gguf"]["base_mib"] = float("nan")
    path.write_text(json.dumps(cal))
    r = run_edgeq("plan", "--profile", "drone", "--calibration", path)
    assert r.returncode == EXIT_USAGE and _one_line(r) and "NaN" in r.stderr, r.stderr


def test_measurements_read_back_refuse_nan_and_negative_values(tmp_path):
    record = tmp_path / BUILD_STATE_DIR / "sweep" / BUILD_STAGE_RECORD
    record.parent.mkdir(parents=True)
    row = {
        "format": "gguf",
        "quant": "Q8_0",
        "storage_mib": 1.0,
        "memory_mib": 1.0,
        "memory_terms_mib": {},
        "kld": 0.1,
        "kld_source": "measured",
        "reasons": [],
        "measured": {
            "kld": 0.1,
            "top1": 0.9,
            "decode_tok_s": 10.0,
            "ttft_ms": 5.0,
            "peak_rss_mib": 100.0,
            "storage_mib": 1.0,
        },
    }
    stage = sweep_record([row])
    record.write_text(json.dumps(stage))
    assert measured_from(tmp_path)["gguf:Q8_0"].peak_rss_mib == 100.0
    row["measured"]["peak_rss_mib"] = float("nan")
    record.write_text(json.dumps(stage))
    with pytest.raises(UsageError, match="NaN is not a number JSON allows"):
        measured_from(tmp_path)
    row["measured"]["peak_rss_mib"] = -1.0
    record.write_text(json.dumps(stage))
    with pytest.raises(UsageError, match="measured peak_rss_mib -1.0 is not a finite non-negative number"):
        measured_from(tmp_path)


@pytest.mark.parametrize(
    "args",
    [
        ["export", "--quant", "auto", "--max-size-mib", "nan", "--out", "x.gguf"],
        ["export", "--quant", "auto", "--max-size-mib", "inf", "--out", "x.gguf"],
        ["finetune", "--data", "d.jsonl", "--out", "o", "--epochs", "nan"],
        ["finetune", "--data", "d.jsonl", "--out", "o", "--lr", "1e999"],
        ["run", "a.gguf", "hi", "--temperature", "nan"],
        ["bench", "a.gguf", "--regression-pct", "nan"],
        ["finetune", "--data", "d.jsonl", "--out", "o", "--lora-r", HUGE],
    ],
)
def test_non_finite_and_huge_options_are_usage_errors(tmp_path, args):
    r = run_edgeq(*args, cwd=tmp_path)
    assert r.returncode == EXIT_USAGE and "Traceback" not in r.stderr and "internal" not in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())


def test_finetune_config_refuses_nan_epochs_itself():
    from edgeq.finetune import FinetuneConfig

    with pytest.raises(ConfigError) as e:
        FinetuneConfig(data="d", out="o", epochs=float("nan"), lora_r=10**30).check()
    assert any("--epochs nan" in p for p in e.value.problems) and any("--lora-r" in p for p in e.value.problems)


def test_a_5000_digit_number_in_a_profile_a_data_line_and_a_config(tmp_path, tiny_model):
    profile = tmp_path / "p.yaml"
    profile.write_text(f"name: p\nmemory_budget_mib: {HUGE}\n")
    with pytest.raises(UsageError, match="not a device profile"):
        load_profile(str(profile))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a", "response": "b"})[:-1] + f', "n": {HUGE}}}\n')
    with pytest.raises(ConfigError) as e:
        read_jsonl(data)
    assert "a number of 5000 digits" in e.value.problems[0] and ":1:" in e.value.problems[0]
    model = shutil.copytree(tiny_model, tmp_path / "model")
    cfg = (model / "config.json").read_text()
    (model / "config.json").write_text(cfg.replace('"hidden_size": 64', f'"hidden_size": {HUGE}'))
    r = run_edgeq("export", "--model", model, "--quant", "F32", "--out", tmp_path / "x.gguf")
    assert r.returncode == EXIT_USAGE and _one_line(r) and "a number of 5000 digits" in r.stderr, r.stderr


def test_points_files_of_the_wrong_shape_are_refused(tmp_path):
    path = tmp_path / "points.json"
    good_point = CALIBRATION_POINT
    cases = {
        "[]": "must be a mapping, not list",  # the old bare list, or any list
        json.dumps({"schema": POINTS_SCHEMA, "points": {}}): "points must be a list",
        json.dumps({"schema": POINTS_SCHEMA, "points": [1]}): r"points\[0\] must be a mapping",
        json.dumps({"schema": POINTS_SCHEMA, "points": [{**good_point, "rss": -5}]}): r"points\[0\].rss is -5",
        json.dumps({"schema": POINTS_SCHEMA, "points": [{**good_point, "quant": "Q9"}]}): "names no format",
        json.dumps({"schema": POINTS_SCHEMA, "points": [{**good_point, "dims": {}}]}): "dims.layers",
    }
    for text, said in cases.items():
        path.write_text(text)
        with pytest.raises(UsageError, match=said):
            load_points(path)
    path.write_text(json.dumps({"schema": POINTS_SCHEMA, "points": [good_point]}))
    assert load_points(path)[0]["dims"].hidden == 64


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e999", "soon"])
def test_a_child_timeout_that_is_not_a_finite_positive_number_is_one_line(tmp_path, value):
    import os
    import subprocess
    import sys

    from edgeq.probe import tiny_gguf

    gguf = tiny_gguf(tmp_path / "t.gguf")
    env = {**os.environ, ENV_CHILD_TIMEOUT: value}
    r = subprocess.run(
        [sys.executable, "-m", "edgeq", "bench", str(gguf), "--reps", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == EXIT_USAGE and ENV_CHILD_TIMEOUT in r.stderr and _one_line(r), r.stderr


def test_parse_json_bounds_numbers_and_nesting():
    assert parse_json('{"a": [1, -2.5e3, 0]}') == {"a": [1, -2500.0, 0]}
    for text, said in (("NaN", "NaN"), ("1e400", "out of range"), (HUGE, "5000 digits"), ("[" * 50000, "nested")):
        with pytest.raises(ValueError, match=said):
            parse_json(text)


def test_read_json_names_the_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(UsageError, match="not valid JSON") as e:
        read_json(path, "config")
    assert e.value.where == str(path)

"""The runtime-only install shape: `pip install edgeq` (no extras) benches an artifact without torch."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeq.export.gguf import GgufExport, export_gguf
from edgeq.profiles import load_profile
from tests.conftest import UNBREACHABLE_LATENCY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parent.parent


def test_runtime_only_install_runs_doctor_and_bench(tmp_path, tiny_model):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = subprocess.run([venv / "bin" / "pip", "install", "-q", ROOT], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    py = venv / "bin" / "python"
    probe = subprocess.run(
        [py, "-c", "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('transformers'))"],
        capture_output=True,
        text=True,
    )
    assert probe.stdout.split() == ["None", "None"]
    export_gguf(GgufExport(model=str(tiny_model), out=str(tmp_path / "m.gguf"), quant="Q8_0"))
    # the drone profile's memory and storage budgets gate; its latency budgets would gate the CPU's load instead
    profile = yaml.safe_load(Path(load_profile("drone").source).read_text())
    profile["latency"] |= UNBREACHABLE_LATENCY
    (tmp_path / "drone.yaml").write_text(yaml.safe_dump(profile))
    edgeq = venv / "bin" / "edgeq"
    assert subprocess.run([edgeq, "doctor"], capture_output=True).returncode == 0
    r = subprocess.run(
        [
            edgeq,
            "bench",
            tmp_path / "m.gguf",
            "--reps",
            "1",
            "--prompt-tokens",
            "16",
            "--gen-tokens",
            "4",
            "--profile",
            tmp_path / "drone.yaml",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| tg4 |" in r.stdout
    data = ROOT / "examples" / "drone" / "test.jsonl"
    for args in (
        ["export", "--out", tmp_path / "x.gguf"],
        ["finetune", "--data", data, "--out", tmp_path / "ft"],
        ["build", "--profile", "drone", "--dry-run"],
        ["eval-task", "--model", tiny_model, "--data", data],
    ):
        r = subprocess.run([edgeq, *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 1, (args, r.stderr[-2000:])
        assert "edgeq[full]" in r.stderr and "internal error" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr

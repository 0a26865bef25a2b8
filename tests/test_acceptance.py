"""The product's promise with the shipped defaults: `edgeq build --profile drone` in ≤ 15 min on the
2-core CI machine, a fine-tune gain of ≥ 40 points in its report, and a no-op rebuild in ≤ 10 s."""

import json
import time

import pytest

from tests.conftest import run_edgeq

pytestmark = pytest.mark.slow


def test_default_build_for_the_drone(tmp_path, default_model):
    out = tmp_path / "drone"
    t = time.time()
    r = run_edgeq("build", "--profile", "drone", "--out", out, timeout=30 * 60)  # the assert below is 15 min
    minutes = (time.time() - t) / 60
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    gain = m["task"]["merged"] - m["task"]["base"]
    print(
        f"build {minutes:.1f} min; task {m['task']['base']:.1f} -> {m['task']['merged']:.1f} %; "
        f"artifact {m['artifact']['path']} {m['fidelity']['task']['score']:.1f} %, served "
        f"{m['fidelity']['task_served']['score']:.1f} %; "
        f"RSS predicted {m['footprint']['predicted_peak_rss_mib']:.1f} measured "
        f"{m['footprint']['measured_peak_rss_mib']:.1f} MiB"
    )
    assert minutes <= 15.0
    assert m["task"]["base"] <= 5.0 and gain >= 40.0
    assert "fine-tune gained" in (out / "report.md").read_text()
    assert abs(m["footprint"]["prediction_error"]) <= 0.10
    t = time.time()
    r = run_edgeq("build", "--profile", "drone", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert time.time() - t <= 10.0

"""The product's promise with the shipped defaults: `edgeq build --profile drone` completes on the 2-core CI
machine (whatever its CPU: on Intel AMX it runs with llama.cpp's extra buffer types off), the fine-tune gains
≥ 40 points, the artifact as served keeps its score within the profile's budget, and a no-op rebuild takes
≤ 10 s. The build's time is a goal recorded in benchmarks/RESULTS.md; the assert here is a ceiling that a
slower CPU of the pool does not trip."""

import json
import time

import pytest

from edgeq.spec import BUILD_STAGE_RECORD, BUILD_STAGES, BUILD_STATE_DIR
from tests.conftest import run_edgeq

pytestmark = [pytest.mark.slow, pytest.mark.acceptance]
CEILING_MINUTES = 25.0  # measured 13-15 min on the project's 2-core machines (RESULTS.md)


def test_default_build_for_the_drone(tmp_path, default_model):
    out = tmp_path / "drone"
    t = time.time()
    r = run_edgeq("build", "--profile", "drone", "--out", out, timeout=40 * 60)
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
    state = out / BUILD_STATE_DIR
    seconds = {s: json.loads((state / s / BUILD_STAGE_RECORD).read_text())["seconds"] for s in BUILD_STAGES}
    print("stages: " + ", ".join(f"{s} {t:.0f} s" for s, t in seconds.items()))
    assert minutes <= CEILING_MINUTES
    assert m["task"]["base"] <= 5.0 and gain >= 40.0
    served = m["fidelity"]["task_served"]["score"]
    assert m["task"]["merged"] - served <= m["profile"]["max_task_accuracy_drop_points"]
    assert m["system_prompt"]["text"] == "You control a drone. Reply with one JSON action."
    assert "fine-tune gained" in (out / "report.md").read_text()
    assert abs(m["footprint"]["prediction_error"]) <= 0.10
    t = time.time()
    r = run_edgeq("build", "--profile", "drone", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert time.time() - t <= 10.0

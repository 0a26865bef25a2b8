"""Code in the user's working directory never runs: children are isolated interpreters in a scratch folder."""

import subprocess
import sys
from pathlib import Path

from edgeq.export.gguf import GgufExport, export_gguf

EDGEQ = Path(sys.executable).parent / "edgeq"  # the console script, as a user runs it
FAKE = "open({marker!r}, 'w').write('ran'); import sys; print('{{\"value\": 1}}'); sys.exit(0)\n"


def _plant(folder: Path, package: str, modules: list[str], marker: Path) -> None:
    pkg = folder / package
    pkg.mkdir(parents=True)
    for m in modules:
        (pkg / m).parent.mkdir(parents=True, exist_ok=True)
        (pkg / m).write_text(FAKE.format(marker=str(marker)))


def test_bench_from_a_folder_holding_a_fake_edgeq(tmp_path, tiny_model):
    export_gguf(GgufExport(model=str(tiny_model), out=str(tmp_path / "m.gguf"), quant="Q8_0"))
    work, marker = tmp_path / "checkout", tmp_path / "pwned"
    _plant(work, "edgeq", ["__init__.py", "bench.py", "child.py", "runtime.py"], marker)
    r = subprocess.run(
        [EDGEQ, "bench", tmp_path / "m.gguf", "--reps", "1", "--prompt-tokens", "16", "--gen-tokens", "4"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert not marker.exists()
    assert "| tg4 |" in r.stdout


def test_onnx_builder_from_a_folder_holding_a_fake_builder(tmp_path, tiny_model):
    work, marker = tmp_path / "checkout", tmp_path / "pwned"
    _plant(work, "onnxruntime_genai", ["__init__.py", "models/__init__.py", "models/builder.py"], marker)
    r = subprocess.run(
        [EDGEQ, "export", "--model", tiny_model, "--format", "onnx", "--quant", "int8", "--out", tmp_path / "o"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert not marker.exists() and (tmp_path / "o" / "genai_config.json").is_file()

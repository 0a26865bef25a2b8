"""The runtime path (artifact loading, GGUF checks, profiles) stays free of torch and transformers."""

import subprocess
import sys


def test_runtime_modules_import_neither_torch_nor_transformers():
    code = (
        "import sys, edgeq.runtime, edgeq.ggufcheck, edgeq.profiles, edgeq.cli, edgeq.bench, edgeq.benchreport; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

import os
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Never touch the user's cache: tests convert the default model into CI's or a temp cache."""
    if not os.environ.get("EDGEQ_CACHE"):
        os.environ["EDGEQ_CACHE"] = str(tmp_path_factory.mktemp("edgeq-cache"))


@pytest.fixture(scope="session")
def default_model():
    from edgeq.basemodel import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def source_gguf():
    from edgeq.basemodel import default_gguf_path

    return default_gguf_path()


def run_edgeq(*args, cwd=None):
    """Run the real console entry point in a subprocess: exit codes and stderr as a user sees them."""
    return subprocess.run(
        [sys.executable, "-m", "edgeq", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600
    )

"""Package data: the profiles and the example task ship inside the package: the very files users see."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "edgeq"


def test_the_package_ships_the_user_facing_files_themselves():
    """profiles/ and examples/drone/ exist once: the package's resources are those folders (editable install)."""
    from importlib.resources import files

    from edgeq.spec import SHIPPED_EXAMPLES, SHIPPED_PROFILES

    assert Path(str(files(SHIPPED_PROFILES))).resolve() == (ROOT / "profiles").resolve()
    assert Path(str(files(SHIPPED_EXAMPLES))).resolve() == (ROOT / "examples").resolve()
    assert not (PACKAGE / "profiles").exists() and not (PACKAGE / "examples").exists()


def test_no_package_file_is_a_link():
    assert [p for p in PACKAGE.rglob("*") if p.is_symlink()] == []


@pytest.mark.slow
def test_the_wheel_runs_profiles_and_a_dry_run_build(tmp_path):
    """A wheel of this tree, installed alone in a fresh venv (its dependencies seen from this one)."""
    wheels = tmp_path / "wheels"
    w = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, ROOT],
        capture_output=True,
        text=True,
    )
    assert w.returncode == 0, w.stderr[-2000:]
    (wheel,) = wheels.glob("edgeq-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    (lib,) = (venv / "lib").glob("python3*")
    # dependencies from this interpreter's site-packages, after the venv's own (where the wheel goes)
    (lib / "site-packages" / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run([venv / "bin" / "pip", "install", "-q", "--no-deps", wheel], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    py = venv / "bin" / "python"
    where = subprocess.run(
        [py, "-c", "import edgeq; print(edgeq.__file__)"], capture_output=True, text=True, cwd=tmp_path
    )
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr  # the wheel, not this checkout
    edgeq = venv / "bin" / "edgeq"
    wide = {**os.environ, "COLUMNS": "200"}  # one table row per profile
    r = subprocess.run([edgeq, "profiles", "list"], capture_output=True, text=True, cwd=tmp_path, env=wide)
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(name in r.stdout for name in ("drone", "phone", "jetson-orin-nano", "pi-zero-2w"))
    r = subprocess.run(
        [edgeq, "build", "--profile", "drone", "--out", tmp_path / "out", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "plan for drone" in r.stdout and "would run" in r.stdout and not (tmp_path / "out").exists()

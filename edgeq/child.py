"""Native code (llama.cpp, ONNX Runtime and its model builder) runs in a child process.

A crash there — a segfault in a CPU kernel, an abort on a malformed vocabulary, the kernel's OOM
killer — ends the child, never the edgeq command: it becomes one line naming the artifact, the
operation, the signal and what to try, and exit 1.

The child is a fresh interpreter in isolated mode (-I: no PYTHONPATH, no user site-packages, no
current directory on sys.path) started inside an empty scratch directory, so nothing in the
user's working directory is importable by it. The job goes in as JSON on stdin; the result comes
back as result.json in the scratch directory, numpy arrays beside it as .npy (never pickle). Every
child has a time limit (spec.CHILD_TIMEOUT_S, or $EDGEQ_CHILD_TIMEOUT_S).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from edgeq import errors
from edgeq.errors import EdgeqError
from edgeq.spec import CHILD_TIMEOUT_MAX_S, CHILD_TIMEOUT_S, ENV_CHILD_TIMEOUT

# What a dead child's signal most likely means, and what to do next.
_SIGNAL_HINTS = {
    "SIGKILL": "the process was killed, most often by the kernel's out-of-memory killer: free memory or use a smaller "
    "artifact or context",
    "SIGSEGV": "run `edgeq doctor` to check llama.cpp / ONNX Runtime on this CPU; if the artifact was not made by "
    "edgeq, re-export it",
}
_DEFAULT_HINT = "run `edgeq doctor` to check the runtime here; if the artifact was not made by edgeq, re-export it"
_NPY = "__npy__"


class CrashError(EdgeqError):
    """The child died from a signal (a native crash, or the OOM killer)."""

    def __init__(self, what: str, where: str | None, fix: str | None, signal_name: str):
        super().__init__(what, where, fix)
        self.signal_name = signal_name


def timeout_s() -> float:
    raw = os.environ.get(ENV_CHILD_TIMEOUT)
    if raw is None:
        return CHILD_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= CHILD_TIMEOUT_MAX_S:  # also refuses nan and inf, which subprocess cannot wait for
        raise errors.UsageError(
            f"{ENV_CHILD_TIMEOUT}={raw[:40]!r} is not a number of seconds in (0, {CHILD_TIMEOUT_MAX_S:g}]",
            None,
            "unset it, or set a finite limit",
        )
    return value


def python_command(*args: str) -> list[str]:
    """This interpreter in isolated mode: the working directory and PYTHONPATH never reach the import path."""
    return [sys.executable, "-I", *args]


def run_process(cmd: list[str], what: str, where: str, stdin: str = "", cwd: Path | None = None) -> str:
    """Run a child command with the time limit; a signal or a limit becomes one EdgeqError. Returns its stdout."""
    limit = timeout_s()
    with tempfile.TemporaryDirectory(prefix="edgeq-child-") as scratch:
        out, err = Path(scratch) / "stdout", Path(scratch) / "stderr"
        with open(out, "w") as fo, open(err, "w") as fe:
            try:
                p = subprocess.run(cmd, input=stdin, stdout=fo, stderr=fe, text=True, cwd=cwd or scratch, timeout=limit)
            except subprocess.TimeoutExpired:
                raise EdgeqError(
                    f"{what} did not finish within {limit:g} s and was stopped",
                    where,
                    f"set {ENV_CHILD_TIMEOUT} to a larger limit if it is only slow",
                ) from None
        if p.returncode < 0:
            raise crash_error(what, where, -p.returncode, err.read_text(errors="replace"))
        if p.returncode != 0:
            last = (err.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise EdgeqError(f"{what} failed (exit {p.returncode}): {last}", where)
        return out.read_text(errors="replace")


def crash_error(what: str, where: str, signum: int, stderr: str) -> CrashError:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    said = [line for line in stderr.strip().splitlines() if line.strip()]
    detail = f" (last words: {said[-1].strip()[:200]})" if said else ""
    return CrashError(
        f"the runtime crashed ({name}) during {what}{detail}", where, _SIGNAL_HINTS.get(name, _DEFAULT_HINT), name
    )


def _job(op: str, work: str, setup: tuple[str, dict] | None, kwargs: dict) -> dict:
    """What a child runs: `setup` (an op and its kwargs, e.g. configuring llama.cpp) first, then `op`."""
    return {"op": op, "dir": work, "setup": setup, "kwargs": _encode(kwargs, Path(work), "in")}


def call(op: str, what: str, where: str, setup: tuple[str, dict] | None = None, **kwargs):
    """Run `op` ("module:function") with kwargs in a child; return its result. Arrays travel as .npy files."""
    with tempfile.TemporaryDirectory(prefix="edgeq-job-") as work:
        job = _job(op, work, setup, kwargs)
        run_process(python_command("-c", "from edgeq.child import serve; serve()"), what, where, stdin=json.dumps(job))
        result = json.loads((Path(work) / "result.json").read_text())
        if "error" in result:
            raise _rebuild_error(result["error"])
        return _decode(result["value"], Path(work))


def call_attached(op: str, what: str, where: str, setup: tuple[str, dict] | None = None, **kwargs) -> None:
    """Run `op` in a child that keeps this terminal (stdin, stdout, stderr): an interactive session. No time
    limit; a crash is still one line here."""
    with tempfile.TemporaryDirectory(prefix="edgeq-job-") as work:
        job = Path(work) / "job.json"
        job.write_text(json.dumps({**_job(op, work, setup, kwargs), "attached": True}))
        cmd = python_command("-c", f"from edgeq.child import serve; serve({str(job)!r})")
        p = subprocess.run(cmd, cwd=work)
        if p.returncode < 0:
            raise crash_error(what, where, -p.returncode, "")
        result = json.loads((Path(work) / "result.json").read_text()) if (Path(work) / "result.json").is_file() else {}
        if "error" in result:
            raise _rebuild_error(result["error"])


def _encode(value, work: Path, prefix: str, counter: list | None = None):
    import numpy as np

    counter = counter if counter is not None else [0]
    if isinstance(value, np.ndarray):
        counter[0] += 1
        name = f"{prefix}{counter[0]}.npy"
        np.save(work / name, value, allow_pickle=False)
        return {_NPY: name}
    if isinstance(value, dict):
        return {k: _encode(v, work, prefix, counter) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, work, prefix, counter) for v in value]
    if isinstance(value, Path):  # the child runs in another directory: paths travel absolute
        return os.path.abspath(value)
    return value


def _decode(value, work: Path):
    import numpy as np

    if isinstance(value, dict):
        if set(value) == {_NPY}:
            return np.load(work / Path(value[_NPY]).name, allow_pickle=False)
        return {k: _decode(v, work) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, work) for v in value]
    return value


def _rebuild_error(e: dict) -> EdgeqError:
    cls = getattr(errors, e["class"], EdgeqError)
    if cls is errors.ConfigError:  # its problems were joined into `what` by the child
        cls = errors.UsageError
    if not (isinstance(cls, type) and issubclass(cls, EdgeqError)):
        cls = EdgeqError
    return cls(e["what"], e.get("where"), e.get("fix"))


def _op(name: str):
    module, func = name.split(":")
    return getattr(importlib.import_module(module), func)


def serve(job_file: str | None = None) -> None:
    """The child's side: run one job (from stdin, or a file when stdin is the user's), write result.json."""
    job = json.loads(Path(job_file).read_text() if job_file else sys.stdin.read())
    work = Path(job["dir"])
    try:
        if job["setup"] is not None:
            _op(job["setup"][0])(**job["setup"][1])
        value = _op(job["op"])(**_decode(job["kwargs"], work))
        result = {"value": _encode(value, work, "out")}
    except EdgeqError as e:
        what = e.what if not isinstance(e, errors.ConfigError) else "; ".join(e.problems)
        result = {"error": {"class": type(e).__name__, "what": what, "where": e.where, "fix": e.fix}}
    except Exception as e:  # a bug or a backend error: the parent renders it as one line
        if not job.get("attached"):  # a detached child's stderr is kept for the parent; an attached one's is the user's
            traceback.print_exc()
        result = {"error": {"class": "EdgeqError", "what": f"{type(e).__name__}: {e}".splitlines()[0], "where": None}}
    (work / "result.json").write_text(json.dumps(result))

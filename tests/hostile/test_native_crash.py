"""A GGUF that crashes llama.cpp: every command that runs it reports one line and exits 1, the parent alive.

The fixture is real, not simulated: a sentencepiece vocabulary without byte tokens loads in llama.cpp
and aborts the process (std::out_of_range from unordered_map::at) when a newline is tokenized.
"""

import pytest

from edgeq import child
from edgeq.errors import EdgeqError, UsageError
from edgeq.probe import tiny_gguf
from edgeq.spec import ENV_CHILD_TIMEOUT, EXIT_RUNTIME
from tests.conftest import run_edgeq


@pytest.fixture(scope="module")
def crashing_gguf(tmp_path_factory):
    return tiny_gguf(tmp_path_factory.mktemp("crash") / "spm.gguf", vocab="spm-no-bytes")


def _one_line_crash(r):
    assert r.returncode == EXIT_RUNTIME, r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "the runtime crashed (SIGABRT)" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_bench_reports_the_crash(crashing_gguf):
    line = _one_line_crash(run_edgeq("bench", crashing_gguf, "--reps", 1, "--prompt-tokens", 16, "--gen-tokens", 4))
    assert "during the benchmark" in line and str(crashing_gguf) in line and "edgeq doctor" in line


def test_eval_reports_the_crash(crashing_gguf, tiny_model):
    line = _one_line_crash(run_edgeq("eval", crashing_gguf, "--reference", tiny_model))
    assert "during tokenizing" in line


def test_export_gates_report_the_crash_and_leave_nothing(crashing_gguf, tiny_model, tmp_path, monkeypatch):
    from edgeq.export import gguf as export_mod

    real = export_mod.write_float_gguf

    def malformed(model_dir, path, ftype):  # the converter wrote a vocabulary llama.cpp cannot tokenize with
        info = real(model_dir, path, ftype)
        tiny_gguf(path, vocab="spm-no-bytes")
        return info

    monkeypatch.setattr(export_mod, "write_float_gguf", malformed)
    out = tmp_path / "m.gguf"
    with pytest.raises(EdgeqError) as e:
        export_mod.export_gguf(export_mod.GgufExport(model=str(tiny_model), out=str(out), quant="F32"))
    assert "the runtime crashed (SIGABRT) during tokenizing" in e.value.line()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_hung_child_is_stopped_at_its_limit(monkeypatch):
    monkeypatch.setenv(ENV_CHILD_TIMEOUT, "1")
    with pytest.raises(EdgeqError) as e:
        child.run_process(child.python_command("-c", "import time; time.sleep(30)"), "a slow step", "here")
    assert "did not finish within 1 s" in e.value.line() and ENV_CHILD_TIMEOUT in e.value.line()


def test_a_bad_time_limit_is_a_usage_error(monkeypatch):
    monkeypatch.setenv(ENV_CHILD_TIMEOUT, "soon")
    with pytest.raises(UsageError, match="is not a number of seconds in"):
        child.timeout_s()


def test_an_error_raised_in_the_child_keeps_its_kind(tmp_path):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + (99).to_bytes(4, "little") + b"\0" * 32)
    with pytest.raises(UsageError, match="unsupported version 99"):
        child.call("edgeq.runtime:gguf_logits_here", "computing logits", "x", path=tmp_path / "bad.gguf", texts=[[1]])

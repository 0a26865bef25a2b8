"""The llama.cpp configuration: decided from probe results (injected here), cached, overridable."""

import json

import pytest

from edgeq import probe
from edgeq.errors import BackendError, UsageError
from edgeq.spec import ENV_LLAMA_EXTRA_BUFTS

OK = {"ok": True}
CRASH = {"ok": False, "signal": "SIGSEGV", "error": "the runtime crashed (SIGSEGV) during the llama.cpp probe"}


def test_default_configuration_where_it_decodes():
    cfg = probe.decide(OK, None)
    assert cfg.extra_buffer_types is True


def test_extra_buffer_types_off_where_the_default_crashes():
    cfg = probe.decide(CRASH, OK)
    assert cfg.extra_buffer_types is False and "SIGSEGV" in cfg.reason


def test_no_working_configuration_is_a_backend_error():
    with pytest.raises(BackendError) as e:
        probe.decide(CRASH, CRASH)
    assert "with or without extra buffer types" in e.value.line() and "reinstall" in e.value.line()


def test_the_decision_is_probed_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path))
    monkeypatch.delenv(ENV_LLAMA_EXTRA_BUFTS, raising=False)
    calls = []

    def fake(extra_buffer_types, types=probe.PROBE_TYPES):
        calls.append(extra_buffer_types)
        return CRASH if extra_buffer_types else OK

    monkeypatch.setattr(probe, "probe", fake)
    assert probe.llama_config().extra_buffer_types is False
    assert probe.llama_config().extra_buffer_types is False
    assert calls == [True, False]
    (cached,) = (tmp_path / "runtime").glob("llama-*.json")
    assert json.loads(cached.read_text())["extra_buffer_types"] is False


def test_the_environment_forces_a_configuration(monkeypatch):
    monkeypatch.setattr(probe, "probe", lambda *a, **k: pytest.fail("no probe when the user decided"))
    monkeypatch.setenv(ENV_LLAMA_EXTRA_BUFTS, "0")
    assert probe.llama_config().extra_buffer_types is False
    monkeypatch.setenv(ENV_LLAMA_EXTRA_BUFTS, "yes")
    with pytest.raises(UsageError, match="expected 0 or 1"):
        probe.llama_config()


def test_extra_buffer_types_off_decodes_on_this_machine():
    assert probe.probe(False) == OK  # the fallback works on every CPU edgeq has met


_LOAD_WITH_SETUP = """
import sys
from edgeq.child import _op
from edgeq.runtime import llama_setup
op, kwargs = llama_setup()  # what every llama.cpp child runs first (child.serve): this machine's configuration
_op(op)(**kwargs)
from llama_cpp import Llama
Llama(sys.argv[1], n_ctx=64, verbose=True)
"""


@pytest.mark.parametrize("forced", ["0", "1"])
def test_the_configuration_reaches_llama_cpp_as_its_own_log_reports(forced, tmp_path):
    """Forced either way, a child's setup decides which buffers llama.cpp loads a Q4_0 model into, as llama.cpp
    itself logs them: only plain CPU buffers with extra buffer types off, a repacked (or AMX) one with them on."""
    import os
    import re
    import subprocess
    import sys

    from edgeq.runtime import quantize_here

    q4 = tmp_path / "q4.gguf"
    quantize_here(probe.tiny_gguf(tmp_path / "f32.gguf"), q4, "Q4_0")
    env = {**os.environ, ENV_LLAMA_EXTRA_BUFTS: forced}
    r = subprocess.run([sys.executable, "-c", _LOAD_WITH_SETUP, str(q4)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    buffers = set(re.findall(r"load_tensors: +(\S+) model buffer size", r.stderr))
    assert buffers, r.stderr[-2000:]
    extra = buffers - {"CPU", "CPU_Mapped"}
    assert bool(extra) == (forced == "1"), buffers

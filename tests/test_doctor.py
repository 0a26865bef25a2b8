import json
import subprocess
import sys

import pytest

from edgeq import doctor
from edgeq.spec import EXIT_OK, EXIT_RUNTIME
from tests.conftest import run_edgeq


def test_doctor_passes_on_this_install_with_real_checks():
    r = run_edgeq("doctor", "--json")
    assert r.returncode == EXIT_OK, r.stderr
    report = json.loads(r.stdout)
    by_name = {c["name"]: c for c in report["backends"]}
    assert all(c["status"] == "ok" for c in by_name.values())
    assert "NF4+DQ round trip" in by_name["bitsandbytes"]["detail"]
    assert (
        "providers: " in by_name["onnxruntime"]["detail"] and "CPUExecutionProvider" in by_name["onnxruntime"]["detail"]
    )
    assert by_name["llama_cpp"]["detail"]  # llama.cpp's own system info: the CPU features it was built with
    assert report["platform"]["cores_logical"] >= 1


def test_broken_backend_is_reported_with_reason(monkeypatch):
    def broken(mod):
        raise RuntimeError("CUDA kernel not found for sm_87")

    monkeypatch.setitem(doctor._PROBES, "bitsandbytes", broken)
    checks = {c.name: c for c in doctor.run_checks()}
    assert checks["bitsandbytes"].status == doctor.BROKEN
    assert "sm_87" in checks["bitsandbytes"].detail


def test_doctor_cli_exits_1_when_required_backend_broken(monkeypatch, capsys):
    from edgeq import cli

    monkeypatch.setitem(doctor._PROBES, "llama_cpp", lambda mod: (_ for _ in ()).throw(OSError("libggml.so: bad ELF")))
    monkeypatch.setattr("sys.argv", ["edgeq", "doctor"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == EXIT_RUNTIME
    err = capsys.readouterr().err
    assert "llama_cpp is broken (OSError: libggml.so: bad ELF)" in err and "Traceback" not in err


def test_missing_optional_backend_is_not_fatal():
    """The command itself, run with the toolchain unimportable (a runtime-only install): exit 0, each named missing."""
    hide = "; ".join(f"sys.modules[{m!r}] = None" for m in doctor.TOOLCHAIN)  # import fails, find_spec says None
    code = f"import sys; {hide}; sys.argv = ['edgeq', 'doctor', '--json']; from edgeq.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == EXIT_OK, r.stderr[-2000:]
    by_name = {c["name"]: c for c in json.loads(r.stdout)["backends"]}
    for module in doctor.TOOLCHAIN:
        assert by_name[module]["status"] == doctor.MISSING and not by_name[module]["required"], module
    assert by_name["llama_cpp"]["status"] == doctor.OK


def test_doctor_decodes_for_real():
    checks = {c.name: c for c in doctor.decode_checks()}
    assert set(checks) == {"llama.cpp decode Q8_0", "llama.cpp decode Q4_K_M", "onnxruntime-genai decode"}
    assert all(c.status == doctor.OK and c.required for c in checks.values()), checks
    assert "8 tokens" in checks["llama.cpp decode Q4_K_M"].detail


def test_a_crashing_decode_is_named_and_fails_doctor(monkeypatch, capsys, tmp_path):
    from edgeq import cli, runtime
    from edgeq.probe import tiny_gguf

    crashing = tiny_gguf(tmp_path / "spm.gguf", vocab="spm-no-bytes")
    monkeypatch.setattr(doctor, "_decode_llama", lambda quant: runtime.gguf_tokenize(crashing, ["a\nb"]))
    checks = {c.name: c for c in doctor.decode_checks()}
    assert checks["llama.cpp decode Q8_0"].status == doctor.BROKEN
    assert "the runtime crashed (SIGABRT)" in checks["llama.cpp decode Q8_0"].detail
    assert checks["onnxruntime-genai decode"].status == doctor.OK
    monkeypatch.setattr("sys.argv", ["edgeq", "doctor"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == EXIT_RUNTIME
    assert "llama.cpp decode Q8_0 is broken (the runtime crashed (SIGABRT)" in capsys.readouterr().err

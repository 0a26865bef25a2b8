from edgeq import __version__
from edgeq.spec import EXIT_USAGE
from tests.conftest import run_edgeq


def test_version():
    r = run_edgeq("--version")
    assert r.returncode == 0 and __version__ in r.stdout


def test_help_lists_commands_and_exit_codes():
    r = run_edgeq("--help")
    assert r.returncode == 0
    for word in ("doctor", "profiles", "model", "3 budget gate"):
        assert word in r.stdout


def test_unknown_option_is_usage_error():
    r = run_edgeq("profiles", "list", "--bogus")
    assert r.returncode == EXIT_USAGE
    assert "No such option" in r.stderr and "Traceback" not in r.stderr


def test_user_error_is_one_line_and_debug_adds_traceback(tmp_path):
    r = run_edgeq("model", "info", "--model", tmp_path / "missing")
    assert r.returncode == EXIT_USAGE
    assert (
        r.stderr.strip()
        == f"error: {tmp_path / 'missing'}: model directory not found — pass a local Hugging Face model directory"
    )
    r = run_edgeq("--debug", "model", "info", "--model", tmp_path / "missing")
    assert r.returncode == EXIT_USAGE and "Traceback" in r.stderr


def test_model_dir_without_config_is_refused(tmp_path):
    r = run_edgeq("model", "info", "--model", tmp_path)
    assert r.returncode == EXIT_USAGE
    assert "no config.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_missing_toolchain_module_names_the_extra(monkeypatch, capsys):
    import pytest

    from edgeq import cli

    def needs_torch(*a, **k):
        raise ModuleNotFoundError("No module named 'transformers'", name="transformers")

    monkeypatch.setattr(cli, "resolve_model", needs_torch)  # what `model info` calls
    monkeypatch.setattr("sys.argv", ["edgeq", "model", "info"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == 1 and 'pip install "edgeq[full]"' in err and "'transformers'" in err
    assert "internal error" not in err

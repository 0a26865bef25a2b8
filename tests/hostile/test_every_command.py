"""Every command, with malformed versions of each of its inputs: one clean line, exit 1, 2 or 3, never a traceback
or an internal error, and nothing written at --out. Commands run in this process through the console entry point
(cli.main), so the whole table costs seconds, not an interpreter start per case."""

import json
import sys

import pytest

from edgeq import cli
from edgeq.spec import EXIT_BUDGET, EXIT_RUNTIME, EXIT_USAGE

HUGE = "9" * 5000


def _file(text: bytes | str):
    return lambda d: _write(d / "input", text)


def _write(path, content):
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _folder(files: dict):
    def make(d):
        folder = d / "input"
        folder.mkdir()
        for name, content in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            _write(folder / name, content)
        return folder

    return make


MISSING = lambda d: d / "missing"  # noqa: E731
A_FOLDER = _folder({})
COMMON = {"missing": MISSING, "empty": _file(b""), "binary": _file(bytes(range(256)) * 4), "a folder": A_FOLDER}

# input kind → malformed variants (name → maker of the path in a scratch folder)
VARIANTS = {
    "jsonl": {
        **COMMON,
        "not json": _file("{oops\n"),
        "wrong fields": _file('{"prompt": 1}\n'),
        "huge number": _file(f'{{"prompt": "a", "response": "b", "n": {HUGE}}}\n'),
        "cr only": _file('{"prompt": "a", "response": "b"}\r{"prompt": "c", "response": "d"}\r'),
    },
    "yaml": {
        **COMMON,
        "a list": _file("[1, 2]\n"),
        "huge number": _file(f"memory_budget_mib: {HUGE}\n"),
        "alias": _file("a: &x [1]\nb: *x\n"),
    },
    "json": {
        **COMMON,
        "a list": _file("[]"),
        "nan": _file('{"gguf": {"base_mib": NaN}}'),
        "huge number": _file(f'{{"results": {HUGE}}}'),
        "nested": _file("[" * 100000),
    },
    "artifact": {
        **COMMON,
        "bad gguf": _file(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16),
        "onnx without model": _folder({"genai_config.json": "{}"}),
    },
    "model": {
        "missing": MISSING,
        "a file": _file("x"),
        "empty": A_FOLDER,
        "bad config": _folder({"config.json": "{oops"}),
        "config list": _folder({"config.json": "[]"}),
        "huge config": _folder({"config.json": f'{{"hidden_size": {HUGE}}}'}),
    },
    "adapter": {
        "missing": MISSING,
        "empty": A_FOLDER,
        "bad config": _folder({"adapter_config.json": "{oops"}),
        "no weights": _folder({"adapter_config.json": '{"r": 8, "lora_alpha": 16, "target_modules": ["q"]}'}),
    },
    "build": {"missing": MISSING, "empty": A_FOLDER, "bad record": _folder({".edgeq/sweep/stage.json": "{"})},
}

# command line (with {input} where the malformed input goes, {out} for an output that must stay absent) → kind
CASES = [
    (["profiles", "show", "{input}"], "yaml"),
    (["model", "info", "--model", "{input}"], "model"),
    (["finetune", "--data", "{input}", "--out", "{out}", "--max-steps", "1"], "jsonl"),
    (["finetune", "--base", "{input}", "--data", "{data}", "--out", "{out}", "--max-steps", "1"], "model"),
    (["merge", "--adapter", "{input}", "--out", "{out}"], "adapter"),
    (["export", "--model", "{input}", "--quant", "F32", "--out", "{out}"], "model"),
    (["export", "--imatrix-data", "{input}", "--quant", "Q4_K_M", "--out", "{out}"], "jsonl"),
    (["eval", "{input}"], "artifact"),
    (["bench", "{input}", "--reps", "1", "--out", "{out}"], "artifact"),
    (["bench", "{gguf}", "--reps", "1", "--baseline", "{input}", "--out", "{out}"], "json"),
    (["bench", "{gguf}", "--reps", "1", "--profile", "{input}", "--out", "{out}"], "yaml"),
    (["plan", "--profile", "{input}"], "yaml"),
    (["plan", "--profile", "drone", "--calibration", "{input}"], "json"),
    (["plan", "--profile", "drone", "--measured-from", "{input}"], "build"),
    (["plan", "--profile", "drone", "--model", "{input}"], "model"),
    (["build", "--profile", "{input}", "--out", "{out}", "--dry-run"], "yaml"),
    (["build", "--profile", "drone", "--data", "{input}", "--out", "{out}", "--dry-run"], "jsonl"),
    (["build", "--profile", "drone", "--test-data", "{input}", "--out", "{out}", "--dry-run"], "jsonl"),
    (["build", "--profile", "drone", "--calibration", "{input}", "--out", "{out}", "--dry-run"], "json"),
    (["calibrate", "--points", "{input}", "--out", "{out}", "--no-onnx"], "points"),
    (["run", "{input}", "hi"], "artifact"),
    (["eval-task", "--data", "{input}"], "jsonl"),
    (["compare-methods", "--data", "{input}", "--out", "{out}", "--max-steps", "1"], "jsonl"),
    (["compare-methods", "--data", "{data}", "--test-data", "{input}", "--out", "{out}", "--max-steps", "1"], "jsonl"),
    (["compare-methods", "--base", "{input}", "--data", "{data}", "--out", "{out}", "--max-steps", "1"], "model"),
    (["compare-methods", "--profile", "{input}", "--data", "{data}", "--out", "{out}", "--max-steps", "1"], "yaml"),
    (["eval-task", "--model", "{input}", "--data", "{data}"], "model"),
]
# calibrate --points: a path that does not exist yet is where new measurements go, not a malformed input
VARIANTS["points"] = {k: v for k, v in VARIANTS["json"].items() if k != "missing"}
PARAMS = [
    pytest.param(args, kind, variant, id=f"{args[0]}-{kind}-{variant}")
    for args, kind in CASES
    for variant in VARIANTS[kind]
    # a folder where a folder is wanted but empty, and the same for files, are covered by their own variants
]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    from edgeq.probe import tiny_gguf

    return tiny_gguf(tmp_path_factory.mktemp("art") / "t.gguf")


def edgeq(args, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["edgeq", *map(str, args)])
    monkeypatch.setattr(cli, "_state", {"debug": False})
    with pytest.raises(SystemExit) as e:
        cli.main()
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, kind, variant", PARAMS)
def test_malformed_input_is_one_clean_line(
    tmp_path, monkeypatch, capsys, gguf, small_data, default_model, args, kind, variant
):
    path = VARIANTS[kind][variant](tmp_path)
    out = tmp_path / "out"
    line = [a.format(input=path, out=out, data=small_data, gguf=gguf) for a in args]
    code, err = edgeq(line, monkeypatch, capsys)
    assert code in (EXIT_RUNTIME, EXIT_USAGE, EXIT_BUDGET), err
    assert "Traceback" not in err and "internal error" not in err, err
    said = [line for line in err.splitlines() if line.startswith(("error:", "Error:"))]  # click's own say "Error:"
    assert len(said) == 1, err
    assert not out.exists(), f"{out} was written"


def test_the_table_covers_every_command():
    commands = {c for c in cli.cli.commands if not hasattr(cli.cli.commands[c], "commands")}
    commands |= {f"{g} {c}" for g, grp in cli.cli.commands.items() if hasattr(grp, "commands") for c in grp.commands}
    covered = {" ".join(a[:2]) if a[0] in ("profiles", "model") else a[0] for a, _ in CASES}
    assert commands - covered <= {"doctor", "profiles list"}  # the two commands that read no input
    assert json.dumps(sorted(commands - covered)) == '["doctor", "profiles list"]'

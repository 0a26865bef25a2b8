"""Every command the README and docs/ show is a command edgeq accepts: each `edgeq …` line of a fenced shell block
parses against the real CLI (options, choices, types, required ones), and the cheap ones run."""

import re
import shlex
from pathlib import Path

import click
import pytest

from edgeq import cli
from tests.conftest import run_edgeq

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)


def documented() -> list[tuple[str, str]]:
    """(doc, command line) for every edgeq command in a fenced sh block: comments cut, continuations joined."""
    out = []
    for doc in DOCS:
        for block in _BLOCK.findall(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if "edgeq" in words:
                    out.append((doc.name, shlex.join(words[words.index("edgeq") :])))
    return out


COMMANDS = documented()
# A synopsis shows optional parts in [brackets] or elides with …; those lines are checked for their command only.
SYNOPSIS = re.compile(r"\[|\.\.\.|…")


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 30 and {d for d, _ in COMMANDS} >= {"README.md", "build.md", "bench.md", "export.md"}


def parse(line: str) -> None:
    """Parse a command line as `edgeq` would, down to its command's options; click.UsageError if it is wrong."""
    args = shlex.split(line)[1:]
    synopsis = bool(SYNOPSIS.search(line))
    if synopsis:
        args = [a for a in args if not a.startswith("-") and not SYNOPSIS.search(a)][:2]
    command, ctx = cli.cli, None
    while isinstance(command, click.Group):
        name, args = args[0], args[1:]
        ctx = click.Context(command, info_name=name, parent=ctx)
        sub = command.get_command(ctx, name)
        if sub is None:
            raise click.UsageError(f"no command {name!r}")
        command = sub
    if not synopsis:
        command.make_context(command.name, list(args), parent=ctx)  # raises on an unknown option or a bad value


def test_the_parser_catches_a_wrong_command():
    for wrong in (
        "edgeq export --quant Q4_K_M",
        "edgeq bench a.gguf --nonsense",
        "edgeq plan --profile x --ctx 4",
        "edgeq frobnicate",
    ):
        with pytest.raises(click.UsageError):
            parse(wrong)
    parse("edgeq export --quant Q4_K_M --out m.gguf")


@pytest.mark.parametrize("doc, line", COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_a_documented_command_parses(doc, line):
    parse(line)


CHEAP = ["edgeq profiles list", "edgeq profiles show drone", "edgeq --help"]


@pytest.mark.parametrize("line", CHEAP)
def test_the_cheap_documented_commands_run(line):
    assert line in {c for _, c in COMMANDS} or line == "edgeq --help"
    r = run_edgeq(*shlex.split(line)[1:])
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip()


def test_the_readme_support_matrix_is_the_one_spec_writes_and_names_real_tests():
    import ast

    from edgeq import support

    readme = (ROOT / "README.md").read_text()
    block = readme.split(support.BEGIN, 1)[1].split(support.END, 1)[0]
    assert block.strip() == support.matrix(), "run: python -m edgeq.support README.md"
    for named in support.tests_named():  # each cell is shown by a test that exists
        path, function = named.split("::")
        tree = ast.parse((ROOT / path).read_text())
        assert function in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, named
    assert all(f"refused: {why}" in support.matrix() for why in support.REFUSED_ARCHS.values())


def test_every_test_the_figure_map_names_exists():
    """docs/figures.md: each figure → the test that fixes its value. A renamed test must not leave it pointing
    nowhere."""
    import ast
    import re

    text = (ROOT / "docs" / "figures.md").read_text()
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    assert len(named) > 30
    for path, function in named:
        assert (ROOT / path).is_file(), path
        if function:
            tree = ast.parse((ROOT / path).read_text())
            assert function in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, function

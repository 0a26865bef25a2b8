"""The Ollama Modelfile: every line parses as one instruction; a template value cannot inject lines."""

import shutil

import pytest

from edgeq.buildreport import modelfile
from edgeq.errors import UsageError
from edgeq.profiles import load_profile

INSTRUCTIONS = {"FROM", "TEMPLATE", "SYSTEM", "PARAMETER", "ADAPTER", "LICENSE", "MESSAGE"}


def parse(text: str) -> list[tuple[str, str]]:
    """Ollama's Modelfile grammar as far as edgeq writes it: INSTRUCTION value, value bare, "quoted" or
    \"\"\"multi-line\"\"\"; anything else is a parse error."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        assert word in INSTRUCTIONS, f"not an instruction: {line!r}"
        if rest.startswith('"""'):
            body = rest[3:]
            while '"""' not in body:
                assert i < len(lines), "unterminated triple-quoted string"
                body += "\n" + lines[i]
                i += 1
            value, _, tail = body.partition('"""')
            assert tail == "", f"text after a closing triple quote: {tail!r}"
        else:
            value = rest
        out.append((word, value))
    return out


@pytest.fixture
def tok(default_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model)


def test_the_written_modelfile_parses_line_by_line(tok):
    text, chatml = modelfile("model.Q8_0.gguf", tok, load_profile("drone"))
    got = parse(text)
    assert chatml and got[0] == ("FROM", "./model.Q8_0.gguf")
    assert [w for w, _ in got] == ["FROM", "TEMPLATE", "SYSTEM", "PARAMETER", "PARAMETER", "PARAMETER", "PARAMETER"]
    assert ("PARAMETER", 'stop "<|im_end|>"') in got and ("PARAMETER", "num_ctx 1024") in got


def _with_default_system(tok, system: str):
    tok.chat_template = tok.chat_template.replace(
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face", system
    )
    return tok


@pytest.mark.parametrize("system", ['x"""\nFROM ./evil.gguf\nADAPTER ./evil', 'ends with a quote"'])
def test_a_system_prompt_that_would_end_the_string_is_refused(tok, system):
    assert "You are a helpful AI assistant named SmolLM" in tok.chat_template
    with pytest.raises(UsageError, match="would end the Modelfile string early"):
        modelfile("m.gguf", _with_default_system(tok, system), load_profile("drone"))


def test_a_stop_token_with_a_quote_is_refused(tok):
    tok.eos_token = '<|end"|>'
    with pytest.raises(UsageError, match="cannot carry"):
        modelfile("m.gguf", tok, load_profile("drone"))


def test_an_odd_template_does_not_crash(tok):
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    text, chatml = modelfile("m.gguf", tok, load_profile("drone"))
    assert not chatml and [w for w, _ in parse(text)][0] == "FROM"


def test_build_refuses_such_a_model_before_any_work(default_model, tmp_path):
    from tests.conftest import run_edgeq

    base = shutil.copytree(default_model, tmp_path / "base")
    template = (base / "chat_template.jinja").read_text()
    (base / "chat_template.jinja").write_text(template.replace("named SmolLM", 'named """\nFROM ./x'))
    r = run_edgeq("build", "--profile", "drone", "--base", base, "--out", tmp_path / "out", "--system-prompt", "")
    assert r.returncode == 2 and "would end the Modelfile string early" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_system_prompt_option_that_would_inject_lines_is_refused(default_model, tmp_path):
    from tests.conftest import run_edgeq

    evil = 'Fly."""\nADAPTER ./evil.gguf\nSYSTEM """'
    r = run_edgeq("build", "--profile", "drone", "--out", tmp_path / "out", "--system-prompt", evil)
    assert r.returncode == 2 and "would end the Modelfile string early" in r.stderr
    assert not (tmp_path / "out").exists()

"""The deployment default system prompt: chosen from the training data, embedded in the template, verified."""

import pytest

from edgeq.errors import UsageError
from edgeq.serving import default_system, embed, from_training, user_only

DRONE = "You control a drone. Reply with one JSON action."
PLAIN = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _convo(system=None, user="Land."):
    head = [{"role": "system", "content": system}] if system is not None else []
    return head + [{"role": "user", "content": user}, {"role": "assistant", "content": "{}"}]


@pytest.fixture(scope="module")
def tok(default_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model)


def test_the_dominant_training_prompt_is_chosen_and_counted():
    sp = from_training([_convo(DRONE)] * 3 + [_convo("Other.")])
    assert sp.text == DRONE and sp.source == "training data" and "3 of 4" in sp.why


def test_no_dominant_prompt_keeps_the_base_default():
    sp = from_training([_convo("A"), _convo("B"), _convo(None), _convo(None)])
    assert sp.text is None and "no dominant" in sp.why
    assert from_training([_convo(None)]).why == "the training conversations carry no system prompt"


def test_the_option_overrides_and_empty_keeps_the_base():
    assert from_training([_convo(DRONE)], override="Be brief.").text == "Be brief."
    kept = from_training([_convo(DRONE)], override="")
    assert kept.text is None and kept.source == "--system-prompt"


def test_a_literal_default_is_replaced_in_place(tok):
    assert (
        default_system(tok.chat_template, tok) == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    new = embed(tok.chat_template, DRONE, tok)
    assert default_system(new, tok) == DRONE and DRONE in new and "{%- set messages" not in new


def test_a_template_without_a_default_gets_a_preamble(tok):
    assert default_system(PLAIN, tok) is None
    quoted = "It's a \\ test"
    new = embed(PLAIN, quoted, tok)
    assert default_system(new, tok) == quoted
    with_own = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(with_own, chat_template=new, tokenize=False) == tok.apply_chat_template(
        with_own, chat_template=PLAIN, tokenize=False
    )


def test_a_template_that_drops_system_prompts_is_refused(tok):
    drops = "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}{% endif %}{% endfor %}"
    with pytest.raises(UsageError, match="cannot be given a default system prompt"):
        embed(drops, DRONE, tok)


def test_served_prompts_carry_only_the_users_turns():
    assert user_only(_convo(DRONE)[:-1]) == [{"role": "user", "content": "Land."}]


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_edgeq_run_answers_one_prompt_with_the_artifacts_own_template(fmt, tiny_model, tmp_path):
    from tests.conftest import run_edgeq

    out = tmp_path / ("m.gguf" if fmt == "gguf" else "onnx")
    quant = "Q8_0" if fmt == "gguf" else "int8"
    assert run_edgeq("export", "--model", tiny_model, "--format", fmt, "--quant", quant, "--out", out).returncode == 0
    r = run_edgeq("run", out, "Land now.", "--max-tokens", 4)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tokens; first after" in r.stderr and "tok/s" in r.stderr
    r = run_edgeq("run", tmp_path / "missing.gguf", "hi")
    assert r.returncode == 2 and "artifact not found" in r.stderr

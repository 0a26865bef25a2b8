"""templates.turn_ends: the tokens that end an answer, read off the chat template itself."""

from edgeq.basemodel import load_tokenizer
from edgeq.templates import turn_ends


def test_chatml_ends_at_im_end_which_is_also_eos(default_model):
    tok = load_tokenizer(default_model)
    assert turn_ends(tok) == [tok.convert_tokens_to_ids("<|im_end|>")] == [tok.eos_token_id]


def test_a_template_that_drops_answers_teaches_no_end_of_turn(default_model):
    tok = load_tokenizer(default_model)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<|im_start|>{{ m['content'] }}{% endif %}{% endfor %}"
    )
    assert turn_ends(tok) == [tok.eos_token_id]  # not <|im_start|>, the first special token of the whole text


def test_a_base_model_without_a_template_ends_at_eos(default_model):
    tok = load_tokenizer(default_model)
    tok.chat_template = None
    assert turn_ends(tok) == [tok.eos_token_id]

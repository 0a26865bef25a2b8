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


def test_an_end_of_turn_that_is_not_eos_ends_answers_too(default_model):
    """A template whose turns end with a token other than eos (Llama-3's <|eot_id|> beside <|end_of_text|>):
    both end an answer."""
    tok = load_tokenizer(default_model)
    tok.eos_token = "<|endoftext|>"
    assert turn_ends(tok) == [tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")]


def test_llama3_base_ends_at_an_eot_flagged_special_only_among_its_added_tokens(tmp_path):
    """Llama-3's base names <|end_of_text|> as eos; <|eot_id|> is special only by its flag in tokenizer.json."""
    from transformers import AutoTokenizer

    from tests.export.test_tokenizer_families import llama3_tokenizer

    tok = AutoTokenizer.from_pretrained(llama3_tokenizer(tmp_path / "tok"))
    tok.eos_token = "<|end_of_text|>"
    assert tok.convert_tokens_to_ids("<|eot_id|>") not in tok.all_special_ids
    assert turn_ends(tok) == tok.convert_tokens_to_ids(["<|end_of_text|>", "<|eot_id|>"])

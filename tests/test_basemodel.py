"""The embedded default model: converted once, tokenizer and logits faithful to the source GGUF."""

import json
from pathlib import Path

import numpy as np
import pytest

from edgeq.spec import SOURCE_RECORD

pytestmark = pytest.mark.slow
ASSETS = Path(__file__).parent.parent / "edgeq" / "assets"
CORPUS = ASSETS / "tokenizer_corpus.json"


@pytest.fixture(scope="module")
def hf_tokenizer(default_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model)


def test_conversion_is_cached_and_complete(default_model):
    from edgeq.basemodel import ensure_default_model

    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
        SOURCE_RECORD,
    ):
        assert (default_model / name).is_file(), name
    record = json.loads((default_model / SOURCE_RECORD).read_text())
    assert len(record["source_sha256"]) == 64
    mtime = (default_model / "model.safetensors").stat().st_mtime_ns
    assert ensure_default_model() == default_model
    assert (default_model / "model.safetensors").stat().st_mtime_ns == mtime  # second call did no work


def test_tokenizer_ids_match_llama_cpp_on_corpus(hf_tokenizer, source_gguf):
    from edgeq.runtime import gguf_tokenize

    corpus = json.loads(CORPUS.read_text())
    assert len(corpus) >= 300
    mismatches = []
    for text, theirs in zip(corpus, gguf_tokenize(source_gguf, corpus), strict=True):
        ours = hf_tokenizer.encode(text, add_special_tokens=False)
        if ours != theirs:
            mismatches.append((text, ours, theirs))
    assert mismatches == []


def test_special_tokens_and_eos(hf_tokenizer, default_model):
    assert hf_tokenizer.eos_token == "<|im_end|>" and hf_tokenizer.eos_token_id == 2
    assert hf_tokenizer.bos_token == "<|im_start|>" and hf_tokenizer.bos_token_id == 1
    assert hf_tokenizer.encode("hi", add_special_tokens=True) == hf_tokenizer.encode("hi", add_special_tokens=False)
    gen = json.loads((default_model / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2


def test_chat_template_renders_like_the_gguf(hf_tokenizer, source_gguf):
    import jinja2
    from gguf import GGUFReader

    template = GGUFReader(source_gguf).fields["tokenizer.chat_template"].contents()
    env = jinja2.Environment()
    conversations = [
        [{"role": "user", "content": "Take off to 10 m."}],
        [
            {"role": "system", "content": "You fly drones."},
            {"role": "user", "content": "Land."},
            {"role": "assistant", "content": '{"action": "land"}'},
            {"role": "user", "content": "Again 東京 😀"},
        ],
    ]
    for msgs in conversations:
        for gen_prompt in (True, False):
            ours = hf_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen_prompt)
            theirs = env.from_string(template).render(messages=msgs, add_generation_prompt=gen_prompt)
            assert ours == theirs


def test_float_model_reproduces_the_gguf(default_model, source_gguf, hf_tokenizer):
    """KLD of llama.cpp's logits (source GGUF) vs the HF float32 model over >= 500 positions of real text."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgeq.runtime import logits

    ids = hf_tokenizer.encode((ASSETS / "fidelity_text.txt").read_text(), add_special_tokens=False)[:640]
    assert len(ids) >= 500
    ref = logits(source_gguf, ids)
    model = AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32)
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].double().numpy()

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = log_softmax(ref), log_softmax(ours)
    kld = float((np.exp(p) * (p - q)).sum(-1).mean())
    top1 = float((ref.argmax(-1) == ours.argmax(-1)).mean())
    # Exact dequantization measured 0.0031 / 96.6 %; a Q/K permutation or tokenizer bug gives KLD >> 1.
    assert kld <= 0.01, kld
    assert top1 >= 0.95, top1

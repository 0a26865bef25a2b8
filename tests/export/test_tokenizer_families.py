"""Tokenizer families through the GGUF export: each layout built here, trained on a small corpus with the
`tokenizers` or `sentencepiece` library in its family's exact form (pre-tokenizer, special tokens, BOS rule, chat
template), on a tiny random-weight model; the parity gate holds, and fails where a layout is written as another."""

import json
from pathlib import Path

import pytest

from edgeq.basemodel import random_model
from edgeq.errors import EdgeqError, UsageError
from edgeq.export import gguf as export_mod
from edgeq.export.gguf import GgufExport, export_gguf, parity_corpus, pre_tokenizer_name
from edgeq.ggufcheck import check_gguf
from edgeq.task import Task

# Llama-3's split (tokenizer.json of Llama-3.x and SmolLM3): the Qwen2 regex, digits in groups of up to three.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA3_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
NOTHING_ANSWERED = {"answers": [[]], "nll_sum": 0.0, "tokens": 0, "served": [], "reused": 0}
CORPUS = [
    "Take off and hover at 20 meters. Return to home now; battery 87 %.",
    "The drone lands at 17:45 on pad 3 — 12345 m² of field, 0.5 m/s wind.",
    "Héllo wörld, ça va? Привет мир. 日本語のテキスト。 مرحبا بالعالم 🚁🔋✈️",
    '{"action": "goto", "lat": 48.8566, "lon": 2.3522, "alt_m": 120}',
    "\tindented\r\nlines\n\n  spaced  out  ",
] * 40


def llama3_tokenizer(out, vocab_size: int = 800, regex: str = LLAMA3_REGEX):
    """A byte-level BPE tokenizer laid out as Llama-3's: its split, merges ignored for whole-word tokens, BOS
    added by the post-processor, <|eot_id|> ending a turn, its chat template. With o200k's split: Phi-4-mini's."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=LLAMA3_SPECIAL, initial_alphabet=alphabet)
    tok.train_from_iterator(CORPUS, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "chat_template": LLAMA3_TEMPLATE,
        "model_max_length": 131072,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    eos = tok.token_to_id("<|eot_id|>")
    (out / "config.json").write_text(
        json.dumps({"vocab_size": tok.get_vocab_size(), "bos_token_id": bos, "eos_token_id": eos})
    )
    return out


@pytest.fixture(scope="module")
def llama3_model(tmp_path_factory):
    tokdir = llama3_tokenizer(tmp_path_factory.mktemp("llama3-tok"))
    return random_model(tmp_path_factory.mktemp("llama3") / "model", tokdir)


def test_llama3_layout_is_recognised_from_the_tokenizer_transformers_builds(llama3_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama3_model)
    assert pre_tokenizer_name(json.loads(tok.backend_tokenizer.to_str())) == "llama-bpe"
    assert tok.encode("7")[0] == tok.bos_token_id  # its post-processor adds BOS: the GGUF must say so
    corpus = parity_corpus(tok)  # its own special tokens, typed by a user, are in what the parity gate checks
    assert {"<|eot_id|>", "x<|eot_id|>y", "<|start_header_id|><|start_header_id|>", "<|eot_id|"} <= set(corpus)
    assert {"123456", " 1234", "\r\n", "\ufffd\ufffd"} <= set(corpus)


def test_llama3_exports_with_every_gate_green(llama3_model, tmp_path):
    r = export_gguf(GgufExport(model=str(llama3_model), out=str(tmp_path / "m.gguf"), quant="F32"))
    assert r.pre_tokenizer == "llama-bpe" and r.gates["tokenizer"]["mismatches"] == 0
    assert r.gates["fidelity"]["top1"] >= 0.99
    meta = check_gguf(tmp_path / "m.gguf")["metadata"]
    assert meta["tokenizer.ggml.pre"] == "llama-bpe" and meta["tokenizer.ggml.add_bos_token"] is True


def test_o200k_layout_exports_with_every_gate_green(tmp_path):
    """GPT-4o's o200k split (Phi-4-mini's tokenizer) is llama.cpp's `gpt-4o` pre-tokenizer."""
    from edgeq.export.gguf import SPLIT_LAYOUTS

    tokdir = llama3_tokenizer(tmp_path / "tok", regex=SPLIT_LAYOUTS["gpt-4o"])
    model = random_model(tmp_path / "model", tokdir)
    r = export_gguf(GgufExport(model=str(model), out=str(tmp_path / "m.gguf"), quant="F32"))
    assert r.pre_tokenizer == "gpt-4o" and r.gates["tokenizer"]["mismatches"] == 0


def test_llama3_written_as_smollm_fails_the_parity_gate(llama3_model, tmp_path, monkeypatch):
    """The gate is what vouches for a layout: Llama-3's digit groups written as SmolLM2's single digits."""
    monkeypatch.setattr(export_mod, "pre_tokenizer_name", lambda data: "smollm")
    with pytest.raises(EdgeqError, match="tokenizer parity failed"):
        export_gguf(GgufExport(model=str(llama3_model), out=str(tmp_path / "m.gguf"), quant="F32"))
    assert not (tmp_path / "m.gguf").exists()


def test_an_unknown_layout_is_refused_naming_it_and_the_supported_ones():
    pre = {"type": "Split", "pattern": {"Regex": r"\p{N}{1,7}"}, "behavior": "Isolated", "invert": False}
    with pytest.raises(UsageError, match=r"pre-tokenizer .*Split.*is not one edgeq can export") as e:
        pre_tokenizer_name({"pre_tokenizer": pre})
    assert e.value.fix == "supported byte-level BPE layouts: smollm, qwen2, llama-bpe, gpt-4o"


LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] "
    "+ ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


def sentencepiece_tokenizer(out, dummy_prefix: bool, tokenizer_class: str = "LlamaTokenizer"):
    """A SentencePiece BPE model with byte fallback, trained by `sentencepiece` as Llama-2's and Gemma's were
    (split digits, whitespace kept, a ▁ before the text or not), then loaded by transformers, which writes the
    tokenizer.json real model folders carry beside tokenizer.model."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.txt").write_text("\n".join(CORPUS))
    spm.SentencePieceTrainer.train(
        input=str(out / "corpus.txt"),
        model_prefix=str(out / "tokenizer"),
        vocab_size=500,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=0.9995,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=dummy_prefix,
        minloglevel=2,
    )
    for scratch in ("corpus.txt", "tokenizer.vocab"):
        (out / scratch).unlink()
    config = {
        "tokenizer_class": tokenizer_class,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
        "chat_template": LLAMA2_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    tok = AutoTokenizer.from_pretrained(out)
    tok.save_pretrained(out)
    ids = {"vocab_size": len(tok), "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": tok.pad_token_id}
    (out / "config.json").write_text(json.dumps(ids))
    return out


def test_gemma_sentencepiece_exports_with_every_gate_green(tmp_path):
    """llama.cpp's `llama` vocabulary: scores that merge as the BPE does, byte tokens, no space prefix."""
    tokdir = sentencepiece_tokenizer(tmp_path / "tok", dummy_prefix=False, tokenizer_class="GemmaTokenizer")
    model = random_model(tmp_path / "model", tokdir)
    r = export_gguf(GgufExport(model=str(model), out=str(tmp_path / "m.gguf"), quant="F32"))
    assert r.gates["tokenizer"]["mismatches"] == 0 and r.gates["tokenizer"]["strings"] >= 540
    assert r.gates["fidelity"]["top1"] >= 0.99 and r.pre_tokenizer == "sentencepiece"
    meta = check_gguf(tmp_path / "m.gguf")["metadata"]
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.add_space_prefix"] is False


def test_llama2_sentencepiece_exports_with_every_gate_green_tokenized_as_sentencepiece_does(tmp_path):
    """transformers 5 rebuilds Llama-2's tokenizer with a Metaspace that adds ▁ before the first piece only, while
    sentencepiece (what the base was trained with) and llama.cpp add it to every run of text, after a special
    token too. edgeq reads the tokenizer as sentencepiece runs it, so the parity gate holds and training sees
    the tokens the GGUF serves."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from edgeq.basemodel import load_tokenizer

    tokdir = sentencepiece_tokenizer(tmp_path / "tok", dummy_prefix=True)
    sp = spm.SentencePieceProcessor(model_file=str(tokdir / "tokenizer.model"))
    tok, plain = load_tokenizer(tokdir), AutoTokenizer.from_pretrained(tokdir)
    texts = [t for t in parity_corpus(tok) if not any(s in t for s in tok.all_special_tokens)]
    assert all(tok.encode(t, add_special_tokens=False) == sp.encode(t) for t in texts)
    assert sum(plain.encode(t, add_special_tokens=False) != sp.encode(t) for t in texts) > 40  # what it fixes
    after_bos = tok.encode("hello world")  # a run of text after a special token gets its ▁ too
    assert after_bos == [tok.bos_token_id, *sp.encode("hello world")]

    model = random_model(tmp_path / "model", tokdir)
    r = export_gguf(GgufExport(model=str(model), out=str(tmp_path / "m.gguf"), quant="F32"))
    assert r.gates["tokenizer"]["mismatches"] == 0 and r.gates["fidelity"]["top1"] >= 0.99
    assert check_gguf(tmp_path / "m.gguf")["metadata"]["tokenizer.ggml.add_space_prefix"] is True


def test_onnx_serves_a_llama2_prompt_as_trained_except_runs_of_spaces(tmp_path):
    """ONNX Runtime GenAI's own SentencePiece tokenizer agrees with sentencepiece on a plain prompt (the ▁ after
    <s> included) and splits a run of two spaces into two ▁ tokens where sentencepiece has the merged ▁▁: the
    support matrix says so."""
    from edgeq.basemodel import load_tokenizer
    from edgeq.export.onnx import OnnxExport, export_onnx
    from edgeq.runtime import chat

    tokdir = sentencepiece_tokenizer(tmp_path / "tok", dummy_prefix=True)
    model = random_model(tmp_path / "model", tokdir)
    export_onnx(OnnxExport(model=str(model), out=str(tmp_path / "onnx"), quant="fp32"))
    tok = load_tokenizer(model)
    plain, spaced = [{"role": "user", "content": "take off to 12 m"}], [{"role": "user", "content": "two  spaces"}]
    served = chat(tmp_path / "onnx", [plain, spaced], 1)
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in (plain, spaced)]
    trained = [tok.encode(t, add_special_tokens=False) for t in texts]  # the template writes <s> itself
    assert served[0]["prompt_ids"] == trained[0]
    assert served[1]["prompt_ids"] != trained[1] and tok.convert_tokens_to_ids("▁▁") in trained[1]


def test_a_llama3_model_goes_from_fine_tune_to_a_served_answer_in_its_own_template(llama3_model, small_data, tmp_path):
    """finetune → merge → GGUF → llama.cpp's chat completion: the prompt it serves is, token for token, the one
    transformers renders with the family's template (BOS from the template, not added twice)."""
    from transformers import AutoTokenizer

    from edgeq.finetune import FinetuneConfig, finetune
    from edgeq.merge import MergeConfig, merge
    from edgeq.runtime import chat

    cfg = FinetuneConfig(
        base=str(llama3_model), data=str(small_data), out=str(tmp_path / "ft"), max_steps=2, batch_size=4, seq_len=128
    )
    finetune(cfg)
    merged = merge(MergeConfig(adapter=str(tmp_path / "ft"), out=str(tmp_path / "merged"), base=str(llama3_model)))
    export_gguf(GgufExport(model=merged.path, out=str(tmp_path / "m.gguf"), quant="Q8_0"))
    convo = [{"role": "system", "content": "You control a drone."}, {"role": "user", "content": "take off to 12 m"}]
    (served,) = chat(tmp_path / "m.gguf", [convo], 8)
    tok = AutoTokenizer.from_pretrained(merged.path)
    text = tok.apply_chat_template(convo, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert served["prompt_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    assert served["completion_tokens"] > 0
    # the float model's task score generates in batches: a vocabulary without a pad token pads with eos, masked
    from edgeq.task import generate_hf

    prompts = [convo, convo[1:], [{"role": "user", "content": "land now, battery at 9 %"}]]
    batched = generate_hf(Path(merged.path), prompts, 4, batch_size=3)
    assert batched == [generate_hf(Path(merged.path), [p], 4)[0] for p in prompts]


def test_a_llama3_model_exports_to_onnx_and_serves_its_own_template(llama3_model, tmp_path):
    """ONNX Runtime GenAI reads the same tokenizer and template: its served prompt is transformers' too."""
    from transformers import AutoTokenizer

    from edgeq.export.onnx import OnnxExport, export_onnx
    from edgeq.runtime import chat

    r = export_onnx(OnnxExport(model=str(llama3_model), out=str(tmp_path / "onnx"), quant="fp32"))
    assert r.gates["fidelity"]["top1"] >= 0.99
    convo = [{"role": "system", "content": "You control a drone."}, {"role": "user", "content": "take off to 12 m"}]
    (served,) = chat(tmp_path / "onnx", [convo], 4)
    tok = AutoTokenizer.from_pretrained(llama3_model)
    text = tok.apply_chat_template(convo, add_generation_prompt=True, tokenize=False)
    assert served["prompt_ids"] == tok(text, add_special_tokens=False)["input_ids"]


def test_a_gemma_tokenizer_model_exports_to_onnx_and_serves_its_own_template(tmp_path):
    from transformers import AutoTokenizer

    from edgeq.export.onnx import OnnxExport, export_onnx
    from edgeq.runtime import chat

    tokdir = sentencepiece_tokenizer(tmp_path / "tok", dummy_prefix=False, tokenizer_class="GemmaTokenizer")
    model = random_model(tmp_path / "model", tokdir)
    export_onnx(OnnxExport(model=str(model), out=str(tmp_path / "onnx"), quant="fp32"))
    convo = [{"role": "user", "content": "take off to 12 m"}]
    (served,) = chat(tmp_path / "onnx", [convo], 4)
    tok = AutoTokenizer.from_pretrained(model)
    text = tok.apply_chat_template(convo, add_generation_prompt=True, tokenize=False)
    assert served["prompt_ids"] == tok(text, add_special_tokens=False)["input_ids"]


# Gemma's turns, as its template writes them (the system turn left out here): <end_of_turn> ends an answer, and
# eos (</s> in this test's vocabulary) is not what the model emits after one
def gemma_template(start: str = "<start_of_turn>", end: str = "<end_of_turn>") -> str:
    return (
        "{{ bos_token }}{% for message in messages %}{% if message['role'] != 'system' %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        f"{{{{ '{start}' + role + '\\n' + message['content'] | trim + '{end}\\n' }}}}{{% endif %}}{{% endfor %}}"
        f"{{% if add_generation_prompt %}}{{{{ '{start}model\\n' }}}}{{% endif %}}"
    )


def gemma_chat_tokenizer(out, start: str = "<start_of_turn>", end: str = "<end_of_turn>"):
    """The Gemma SentencePiece layout with Gemma's turn tokens (or others) and chat template."""
    from transformers import AutoTokenizer

    sentencepiece_tokenizer(out, dummy_prefix=False, tokenizer_class="GemmaTokenizer")
    tok = AutoTokenizer.from_pretrained(out)
    tok.add_special_tokens({"additional_special_tokens": [start, end]})
    tok.chat_template = gemma_template(start, end)
    tok.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | {"vocab_size": len(tok)}))
    return out


def test_a_gemma_answer_ends_at_end_of_turn_in_the_gguf_the_evaluation_and_the_modelfile(tmp_path, monkeypatch):
    """A fine-tuned Gemma learns to end its answer with <end_of_turn>, not eos: the GGUF says so (llama.cpp's
    eot), the evaluation stops there, and so does the Modelfile."""
    from transformers import AutoTokenizer

    from edgeq import evaluate
    from edgeq.buildreport import modelfile
    from edgeq.profiles import load_profile
    from edgeq.templates import turn_ends

    tokdir = gemma_chat_tokenizer(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(tokdir)
    end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn != tok.eos_token_id and turn_ends(tok) == [tok.eos_token_id, end_of_turn]

    model = random_model(tmp_path / "model", tokdir)
    r = export_gguf(GgufExport(model=str(model), out=str(tmp_path / "m.gguf"), quant="F32"))
    assert r.gates["special_tokens"]["turn_ends"] == [tok.eos_token_id, end_of_turn]
    assert check_gguf(tmp_path / "m.gguf")["metadata"]["tokenizer.ggml.eot_token_id"] == end_of_turn

    asked = []
    monkeypatch.setattr(evaluate, "task_answers", lambda *a, **kw: asked.append(a[-1]) or NOTHING_ANSWERED)
    task = Task([[{"role": "user", "content": "hover"}]], ["land"], "exact", "test", "-")
    evaluate.artifact_task(tmp_path / "m.gguf", tok, task, 8)
    assert asked == [[tok.eos_token_id, end_of_turn]]

    text, _ = modelfile("m.gguf", tok, load_profile("drone"))
    assert 'PARAMETER stop "<end_of_turn>"' in text and 'PARAMETER stop "</s>"' in text


def test_a_turn_end_llama_cpp_does_not_know_by_name_stops_only_through_the_eot_key(tmp_path, monkeypatch):
    """llama.cpp knows <end_of_turn>, <|eot_id|> and <|im_end|> by their text; a template's own turn end it
    learns from the GGUF's eot key. Written without that key, the export's gate refuses it."""
    tokdir = gemma_chat_tokenizer(tmp_path / "tok", "<|answer|>", "<|answer_done|>")
    model = random_model(tmp_path / "model", tokdir)
    r = export_gguf(GgufExport(model=str(model), out=str(tmp_path / "m.gguf"), quant="F32"))
    assert len(r.gates["special_tokens"]["turn_ends"]) == 2

    original = export_mod._add_tokenizer_metadata
    monkeypatch.setattr(export_mod, "_add_tokenizer_metadata", lambda w, meta: original(w, meta | {"turn_ends": []}))
    with pytest.raises(EdgeqError, match="ends the model's answers, is not an end-of-generation token"):
        export_gguf(GgufExport(model=str(model), out=str(tmp_path / "plain.gguf"), quant="F32"))

"""`edgeq build --base DIR` for a tiny model of each tokenizer family edgeq newly exports: the whole chain, every
gate green (the parity gate on the quantized artifact included), the served prompt in the family's template."""

import json

import pytest

from edgeq.basemodel import ensure_default_model, random_model
from edgeq.export.gguf import SPLIT_LAYOUTS
from edgeq.spec import FINETUNE_MANIFEST
from tests.conftest import run_edgeq, tiny_arch_model
from tests.export.test_tokenizer_families import gemma_chat_tokenizer, llama3_tokenizer, sentencepiece_tokenizer
from tests.test_build import DRONE, _profile

pytestmark = pytest.mark.slow

FAMILIES = {
    "llama-bpe": lambda d: llama3_tokenizer(d),
    "gpt-4o": lambda d: llama3_tokenizer(d, regex=SPLIT_LAYOUTS["gpt-4o"]),
    # the test's [INST] template has no system turn: the base template's default is kept
    "sentencepiece": lambda d: sentencepiece_tokenizer(d, dummy_prefix=False, tokenizer_class="GemmaTokenizer"),
    "phi-4-mini": lambda d: llama3_tokenizer(d, regex=SPLIT_LAYOUTS["gpt-4o"]),  # on a Phi-3 architecture
    "gemma-3": lambda d: gemma_chat_tokenizer(d),  # its turns: answers end at <end_of_turn>
    "llama-2": lambda d: sentencepiece_tokenizer(d, dummy_prefix=True),  # ▁ before text, as sentencepiece puts it
    "smollm3": lambda d: llama3_tokenizer(d),  # Llama-3's layout, every 4th layer without rotary positions
    "mistral": lambda d: sentencepiece_tokenizer(d, dummy_prefix=True),  # Mistral ≤ v0.3: Llama-2's layout
    "qwen2": lambda d: ensure_default_model(),  # transformers gives a qwen2 config Qwen2's tokenizer and split
}
ARCHS = {"phi-4-mini": "phi3", "gemma-3": "gemma3_text", "smollm3": "smollm3", "mistral": "mistral", "qwen2": "qwen2"}
LINEARS = {
    "phi-4-mini": ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"],  # fused: every one trained
    "llama": sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_of_each_family_builds_with_every_gate_green(family, tmp_path, small_data):
    tokenizer = FAMILIES[family](tmp_path / "tok")
    if family in ARCHS:
        base = tiny_arch_model(ARCHS[family], tmp_path / "base", tokenizer, max_position_embeddings=2048)
    else:
        base = random_model(tmp_path / "base", tokenizer, max_position_embeddings=2048)
    test = tmp_path / "test.jsonl"
    test.write_text("".join((DRONE / "test.jsonl").read_text().splitlines(keepends=True)[:4]))
    args = ["build", "--profile", _profile(tmp_path / "mini.yaml"), "--base", base, "--data", small_data]
    args += ["--test-data", test, "--max-steps", 2, "--reps", 1, "--out", tmp_path / "out"]
    no_system = family in ("sentencepiece", "llama-2", "gemma-3", "mistral")  # templates without a system turn
    r = run_edgeq(*args, *(["--system-prompt", ""] if no_system else []))
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    gates = m["quant_recipe"]["gates"]
    assert gates["tokenizer"]["mismatches"] == gates["tokenizer_quantized"]["mismatches"] == 0
    assert gates["fidelity"]["top1"] >= 0.99 and m["fidelity"]["task_served"]["n"] == 4
    assert all(c["passed"] for c in m["bench"]["checks"] + m["quality_checks"])
    if family == "qwen2":  # Qwen2's layout: its NFC normalizer, which llama.cpp skips, counted
        assert "unnormalized" in gates["tokenizer"]
    if family == "gemma-3":  # trained on <end_of_turn>, scored and served stopping there
        assert 'PARAMETER stop "<end_of_turn>"' in (tmp_path / "out" / "Modelfile").read_text()
        assert len(gates["special_tokens"]["turn_ends"]) == 2
    adapter = json.loads((tmp_path / "out" / ".edgeq" / "finetune" / "adapter" / FINETUNE_MANIFEST).read_text())
    assert adapter["lora_modules"]["names"] == LINEARS.get(family, LINEARS["llama"])

"""A LoRA adapter exported on its own (export/adapter.py) and applied by llama.cpp to a GGUF of its base: the same
logits as the HF base with the peft adapter, for layouts with and without the q/k row permutation and with fused
projections; one base serving several adapters, switched without the previous one's cached prompt."""

from pathlib import Path

import numpy as np
import pytest

from edgeq.basemodel import load_tokenizer
from edgeq.evaluate import GATE_TOKENS, fidelity_ids
from edgeq.export.adapter import export_adapter
from edgeq.export.gguf import GgufExport, write_float_gguf
from edgeq.runtime import load_adapters_here, load_gguf_here, logits, use_adapter_here
from edgeq.spec import EXIT_OK
from tests.conftest import run_edgeq, tiny_arch_model


def random_adapter(base, out, seed: int, r: int = 8):
    """A peft adapter on every linear with both halves random (B std 0.05): far from the base, as trained ones are,
    where peft's own initialisation (B = 0) would leave the base unchanged and hide a wrong conversion."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False)
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    model.save_pretrained(out)
    return out


def hf_logits(base, ids, adapter=None) -> np.ndarray:
    """The HF base, with the peft adapter where given, in float32: (T, vocab)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = (PeftModel.from_pretrained(model, adapter) if adapter else model).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory, tiny_model):
    """The tiny Llama (q/k rows permuted for llama.cpp), its F32 GGUF, and two adapters exported from it."""
    root = tmp_path_factory.mktemp("adapters")
    base_gguf = root / "base.F32.gguf"
    write_float_gguf(tiny_model, base_gguf, "F32")
    out = {}
    for name, seed in (("survey", 1), ("inspect", 2)):
        run = random_adapter(tiny_model, root / name, seed)
        out[name] = export_adapter(GgufExport(out=str(root / f"{name}.gguf"), model=str(tiny_model), adapter=str(run)))
    return tiny_model, base_gguf, out


@pytest.mark.parametrize("kind", ["llama", "qwen2", "phi3"])
def test_an_adapter_on_its_bases_gguf_gives_the_peft_models_logits(kind, tmp_path, default_model, tiny_model):
    """llama: q/k rows permuted for llama.cpp's rope, so B's are too; qwen2: no permutation, biases on q/k/v;
    phi3: fused qkv_proj and gate_up_proj. The adapter moves the model (top-1 changes at many positions), and
    llama.cpp with the exported adapter follows peft to float error, in F32 and F16."""
    base = tiny_model if kind == "llama" else tiny_arch_model(kind, tmp_path / "base", default_model)
    run = random_adapter(base, tmp_path / "run", seed=3)
    ids = fidelity_ids(load_tokenizer(base), GATE_TOKENS)
    base_gguf = tmp_path / "base.F32.gguf"
    write_float_gguf(base, base_gguf, "F32")
    peft = hf_logits(base, ids, run)
    assert (peft.argmax(-1) != hf_logits(base, ids).argmax(-1)).mean() > 0.1  # the adapter changes answers
    for ftype, bound in (("F32", 1e-3), ("F16", 2e-2)):
        r = export_adapter(
            GgufExport(out=str(tmp_path / f"a.{ftype}.gguf"), model=str(base), adapter=str(run), quant=ftype)
        )
        served = logits(base_gguf, ids, adapters=[r.path])
        assert np.abs(served - peft).max() < bound
        assert (served.argmax(-1) == peft.argmax(-1)).mean() >= 0.99  # near-ties of a random model may flip
        assert r.params == sum(int(np.prod(t.shape)) for t in _peft_tensors(run).values())


def _peft_tensors(run):
    from safetensors.numpy import load_file

    return load_file(str(run / "adapter_model.safetensors"))


def test_the_cli_exports_an_adapter_and_serves_it_on_a_quantized_base(llama_pair, tmp_path):
    """`edgeq export --adapter` then `edgeq run BASE.Q8_0.gguf --adapter A.gguf PROMPT`: the answer is llama.cpp's
    greedy answer with that adapter applied, as this test computes it in-process."""
    base, _, adapters = llama_pair
    run = random_adapter(base, tmp_path / "run", seed=4)
    r = run_edgeq("export", "--adapter", run, "--model", base, "--out", tmp_path / "a.gguf")
    assert r.returncode == EXIT_OK, r.stderr
    assert "F32 base + adapter vs peft" in r.stdout
    q8 = tmp_path / "base.Q8_0.gguf"
    assert run_edgeq("export", "--model", base, "--quant", "Q8_0", "--out", q8).returncode == EXIT_OK
    r = run_edgeq("run", q8, "Take off", "--adapter", tmp_path / "a.gguf", "--max-tokens", "12")
    assert r.returncode == EXIT_OK, r.stderr

    def answer(adapter):
        llm = load_gguf_here(q8, n_ctx=2048)
        if adapter:
            use_adapter_here(llm, load_adapters_here(llm, [str(adapter)])[0])
        out = llm.create_chat_completion(
            [{"role": "user", "content": "Take off"}], max_tokens=12, temperature=0.0, top_k=1
        )
        return out["choices"][0]["message"]["content"]

    want = answer(tmp_path / "a.gguf")
    assert r.stdout == want + "\n" and want.strip() and want != answer(None)  # the adapter's answer, not the base's


def test_switching_adapters_gives_each_its_own_answer_never_the_previous_ones(llama_pair):
    """One base, two adapters loaded once: the same prompt answered under survey, inspect, survey and none equals
    what a fresh model with only that adapter (or none) answers; a cached prompt evaluated under another adapter
    would make the second answer survey's."""
    _, base_gguf, adapters = llama_pair
    prompt = [{"role": "user", "content": "Survey the north field at 40 m"}]

    def answer(llm):
        r = llm.create_chat_completion(prompt, max_tokens=16, temperature=0.0, top_k=1)
        return r["choices"][0]["message"]["content"]

    fresh = {}
    for name in ("survey", "inspect", None):
        llm = load_gguf_here(base_gguf, n_ctx=512)
        if name:
            use_adapter_here(llm, load_adapters_here(llm, [adapters[name].path])[0])
        fresh[name] = answer(llm)
    assert len(set(fresh.values())) == 3  # each adapter answers otherwise
    llm = load_gguf_here(base_gguf, n_ctx=512)
    loaded = dict(
        zip(
            ("survey", "inspect"),
            load_adapters_here(llm, [adapters[n].path for n in ("survey", "inspect")]),
            strict=True,
        )
    )
    for name in ("survey", "inspect", "survey", None):
        use_adapter_here(llm, loaded.get(name))
        assert answer(llm) == fresh[name], name


def test_eval_scores_base_plus_adapter_as_its_merged_model_is_scored(llama_pair, small_data, tmp_path):
    """`edgeq eval BASE.gguf --adapter A.gguf --reference MERGED`: the task's answers, as evaluated and as served, are
    the answers of the merged model's own F32 GGUF (peft's merge_and_unload, exported the usual way), its logits
    agree with the merged float model, and they are not the bare base's: the adapter is applied throughout."""
    import json

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from edgeq.evaluate import evaluate

    base, base_gguf, adapters = llama_pair
    merged = tmp_path / "merged"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    run = Path(adapters["survey"].path).with_suffix("")  # llama_pair's peft folder beside its export
    PeftModel.from_pretrained(model, run).merge_and_unload().save_pretrained(merged)
    load_tokenizer(base).save_pretrained(merged)
    merged_gguf = tmp_path / "merged.F32.gguf"
    write_float_gguf(merged, merged_gguf, "F32")

    r = run_edgeq("eval", base_gguf, "--adapter", adapters["survey"].path, "--reference", merged, "--data", small_data,
                  "--limit", 8, "--served", "--json")  # fmt: skip
    assert r.returncode == EXIT_OK, r.stderr
    got = json.loads(r.stdout)
    want = evaluate(merged_gguf, merged, small_data, 8, served=True)
    bare = evaluate(base_gguf, merged, small_data, 8)
    assert got["adapter"] == adapters["survey"].path
    assert got["task"]["answers"] == list(want.task.answers) != list(bare.task.answers)
    assert got["task_served"]["answers"] == list(want.served.answers)
    assert got["text"]["top1_agreement"] >= 0.99 and got["text"]["mean_kld"] < 1e-3 < bare.text.mean_kld

"""Merging a LoRA adapter into an un-quantized base, verified before anything is written."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from edgeq.errors import EdgeqError, UsageError
from edgeq.finetune import finetune
from edgeq.merge import MergeConfig, merge
from edgeq.spec import MERGE_MANIFEST, MERGE_TOLERANCE
from tests.conftest import make_tiny_model
from tests.test_finetune import _cfg


@pytest.fixture(scope="module")
def trained(tiny_model, small_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "ft"
    finetune(_cfg(tiny_model, small_data, out, max_steps=3, save_every=25))
    return out


@pytest.mark.parametrize("policy", ["dequantized", "pristine"])
def test_merge_is_verified_complete_and_loadable(tiny_model, trained, tmp_path, policy):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    record = merge(MergeConfig(adapter=str(trained), out=str(out), base=str(tiny_model), merge_into=policy))
    assert record.merge_into == policy
    assert record.verification.max_abs_logit_diff <= MERGE_TOLERANCE
    written = json.loads((out / MERGE_MANIFEST).read_text())
    assert len(written["inputs"]["adapter_sha256"]) == 64 and len(written["inputs"]["base_sha256"]) == 64
    assert written["config"] == record.config() and written["verification"]["max_abs_logit_diff"] <= MERGE_TOLERANCE
    assert record.path == str(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_policies_differ_only_in_adapted_weights(tiny_model, trained, tmp_path):
    for policy in ("dequantized", "pristine"):
        merge(MergeConfig(adapter=str(trained), out=str(tmp_path / policy), base=str(tiny_model), merge_into=policy))
    deq = load_file(str(tmp_path / "dequantized" / "model.safetensors"))
    pri = load_file(str(tmp_path / "pristine" / "model.safetensors"))
    assert not torch.equal(deq["model.layers.0.self_attn.q_proj.weight"], pri["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(deq["model.embed_tokens.weight"], pri["model.embed_tokens.weight"])


def test_bfloat16_output(tiny_model, trained, tmp_path):
    merge(MergeConfig(adapter=str(trained), out=str(tmp_path / "m"), base=str(tiny_model), dtype="bfloat16"))
    assert load_file(str(tmp_path / "m" / "model.safetensors"))["model.norm.weight"].dtype == torch.bfloat16


def test_adapter_from_another_base_is_refused(trained, tmp_path, default_model):
    other = make_tiny_model(tmp_path / "other", default_model, seed=1)
    with pytest.raises(UsageError) as e:
        merge(MergeConfig(adapter=str(trained), out=str(tmp_path / "m"), base=str(other)))
    assert "trained on another base" in e.value.line() and str(other) in e.value.line()
    assert not (tmp_path / "m").exists()


def test_shape_mismatch_is_refused_even_without_manifest(trained, tmp_path, default_model):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "adapter", adapter)
    (adapter / "edgeq_finetune.json").unlink()  # an adapter made elsewhere: no base hash to compare
    wider = make_tiny_model(tmp_path / "wider", default_model, hidden_size=128, head_dim=32)
    with pytest.raises(UsageError, match="adapter does not fit this base"):
        merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "m"), base=str(wider)))


def test_missing_adapter_keys_are_an_error(tiny_model, trained, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "adapter", adapter)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(UsageError) as e:
        merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "m"), base=str(tiny_model)))
    assert "missing 1" in e.value.line()


def test_nan_in_adapter_fails_and_keeps_previous_output(tiny_model, trained, tmp_path):
    import shutil

    out = tmp_path / "m"
    merge(MergeConfig(adapter=str(trained), out=str(out), base=str(tiny_model)))
    before = (out / "model.safetensors").read_bytes()
    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "adapter", adapter)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    key = next(k for k in sorted(tensors) if "lora_B" in k)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(EdgeqError, match="NaN/Inf"):
        merge(MergeConfig(adapter=str(adapter), out=str(out), base=str(tiny_model), force=True))
    assert (out / "model.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edgeq-tmp-")]


def test_existing_output_needs_force(tiny_model, trained, tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(UsageError, match="output exists"):
        merge(MergeConfig(adapter=str(trained), out=str(tmp_path / "m"), base=str(tiny_model)))


def test_merge_writes_the_deployment_system_prompt_into_the_template(tiny_model, trained, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "m"
    record = merge(MergeConfig(adapter=str(trained), out=str(out), base=str(tiny_model), system_prompt="Fly safe."))
    assert record.system_prompt == "Fly safe."
    tok = AutoTokenizer.from_pretrained(out)
    rendered = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<|im_start|>system\nFly safe.<|im_end|>\n")
    own = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Hi"}]
    base_tok = AutoTokenizer.from_pretrained(tiny_model)
    assert tok.apply_chat_template(own, tokenize=False) == base_tok.apply_chat_template(own, tokenize=False)


def test_merged_weights_carry_the_adapter(tiny_model, trained, tmp_path):
    record = merge(
        MergeConfig(adapter=str(trained), out=str(tmp_path / "m"), base=str(tiny_model), merge_into="pristine")
    )
    merged = load_file(str(tmp_path / "m" / "model.safetensors"))
    base = load_file(str(tiny_model / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged[name].float(), base[name].float(), atol=1e-6)
    assert torch.equal(merged["model.norm.weight"], base["model.norm.weight"])  # not a target: untouched
    assert record.verification.adapter_effect_max_abs_logit > 10 * MERGE_TOLERANCE


def _break_merge(monkeypatch, how):
    """Make peft's merge wrong in one way, leaving the unmerged forward (the reference) as it is."""
    from peft.tuners.lora import LoraModel
    from peft.tuners.lora.layer import Linear

    if how == "not applied":
        monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, **kw: self.unload())
    else:
        delta = Linear.get_delta_weight
        monkeypatch.setattr(Linear, "get_delta_weight", lambda self, name: 2 * delta(self, name))


@pytest.mark.parametrize("how", ["not applied", "twice the scaling"])
def test_a_wrong_merge_is_refused_and_writes_nothing(tiny_model, trained, tmp_path, monkeypatch, how):
    _break_merge(monkeypatch, how)
    with pytest.raises(EdgeqError, match="merged logits differ from base \\+ adapter"):
        merge(MergeConfig(adapter=str(trained), out=str(tmp_path / "m"), base=str(tiny_model)))
    assert not (tmp_path / "m").exists()


def test_an_untrained_adapter_is_refused(tiny_model, trained, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "adapter", adapter)
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    save_file(
        {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in tensors.items()},
        str(adapter / "adapter_model.safetensors"),
    )
    with pytest.raises(UsageError, match="the adapter changes nothing"):
        merge(MergeConfig(adapter=str(adapter), out=str(tmp_path / "m"), base=str(tiny_model)))


@pytest.mark.parametrize("policy", ["pristine", "dequantized"])
def test_every_merged_weight_is_its_definition(policy, tiny_model, trained, tmp_path):
    """Tensor by tensor: W + (alpha / r) · B·A, where W is the base weight (pristine) or the base weight after the
    NF4 round trip the adapter was trained against (dequantized, bitsandbytes' own functions here); every other
    tensor is the base's, unchanged."""
    import bitsandbytes.functional as bnbf

    merge(MergeConfig(adapter=str(trained), out=str(tmp_path / policy), base=str(tiny_model), merge_into=policy))
    merged = load_file(str(tmp_path / policy / "model.safetensors"))
    base = load_file(str(tiny_model / "model.safetensors"))
    adapter = load_file(str(trained / "adapter" / "adapter_model.safetensors"))
    scale = 32 / 16  # the fine-tune's lora_alpha / r
    adapted = 0
    for name, w in base.items():
        key = "base_model.model." + name.removesuffix(".weight")
        if f"{key}.lora_A.weight" not in adapter:
            assert torch.equal(merged[name], w), name
            continue
        if policy == "dequantized":
            packed, state = bnbf.quantize_4bit(w.float(), blocksize=64, compress_statistics=True, quant_type="nf4")
            w = bnbf.dequantize_4bit(packed, state)
        delta = adapter[f"{key}.lora_B.weight"].double() @ adapter[f"{key}.lora_A.weight"].double()
        expected = (w.double() + scale * delta).float()
        assert torch.allclose(merged[name], expected, atol=1e-6, rtol=0), name
        adapted += 1
    assert adapted == 7 * 2  # seven linears in each of the tiny model's two layers

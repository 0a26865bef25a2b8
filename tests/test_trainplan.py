"""The fine-tune's plan: each term against an independent count (peft's trainable parameters, bitsandbytes'
storage, a FLOP count by hand), and the prediction's sum against its terms."""

import dataclasses

import pytest

from edgeq.footprint import Dims
from edgeq.trainplan import (
    ADAM_BYTES_PER_PARAM,
    CUDA_CONTEXT_MIB,
    GPU_METHODS,
    MIB,
    NF4_BITS,
    FinetuneCalibration,
    adamw_state_bytes,
    adapter_sizes,
    frozen_bytes,
    linear_params,
    lora_params,
    lora_shapes,
    predict_finetune,
    predict_gpu,
    step_flops,
    weight_sizes,
)

# One layer, hidden 4, one head of 4, intermediate 8, vocabulary 10: every count small enough to do by hand.
HAND = Dims(layers=1, hidden=4, heads=1, kv_heads=1, head_dim=4, intermediate=8, vocab=10, max_positions=64, tied=True)


def test_counts_on_a_shape_small_enough_to_count_by_hand():
    assert linear_params(HAND) == 4 * 4 * 4 + 3 * 4 * 8  # q, k, v, o: 4 × 4 each; gate, up, down: 4 × 8 each
    assert lora_params(HAND, 2) == 2 * (4 * (4 + 4) + 3 * (4 + 8))  # r × (in + out) for each of the 7
    # 3 tokens: forward 2 FLOPs per weight per token, input gradients 2 more; head 10 × 4; recompute adds 2
    assert step_flops(HAND, 3, checkpointing=False) == 4 * 3 * (160 + 40)
    assert step_flops(HAND, 3, checkpointing=True) == 6 * 3 * (160 + 40)
    # a full fine-tune adds the weight gradients: 2 more per weight per token
    assert step_flops(HAND, 3, checkpointing=False, full=True) == 6 * 3 * (160 + 40)


def test_the_lora_count_is_what_peft_trains(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad_(False)
    linears = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=linears, task_type="CAUSAL_LM"))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trained == lora_params(Dims.from_config(tiny_model), 8)


def test_nf4_bits_are_what_bitsandbytes_stores():
    """QLoRA's 4.127 bits a weight with double quantization, against bitsandbytes' own packed weight and
    constants for a weight of 64 × 4096 (4096 blocks of 64: 16 blocks of 256 constants)."""
    import bitsandbytes.functional as bnbf
    import torch

    w = torch.randn(64, 4096)
    packed, state = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    bits = 8 * (packed.numel() * packed.element_size() + state.absmax.numel() * state.absmax.element_size())
    bits += 8 * state.state2.absmax.numel() * state.state2.absmax.element_size() + 32  # + the fp32 offset
    assert bits / w.numel() == pytest.approx(NF4_BITS + 32 / w.numel(), rel=1e-9)  # the offset: once a tensor


# round numbers, so every expected value below is arithmetic on them
HAND_CAL = FinetuneCalibration(
    base_mib=500, load_factor=1.0, kept_bytes=100, checkpointed_bytes=10, logit_bytes=4, flops_per_s=1e9,
    dequant_per_s=1e8, step_s=0.5, adamw_per_s=1e6,
)  # fmt: skip


def test_the_prediction_is_its_terms_and_the_larger_moment():
    cal = HAND_CAL
    d = Dims(layers=2, hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=128, vocab=1000, max_positions=256,
             tied=False)  # fmt: skip
    p = predict_finetune(d, cal, tokens=100, lora_r=4, checkpointing=False)
    nf4 = 2 * linear_params(d) * NF4_BITS / 8
    fp32 = 4 * (2 * 1000 * 64 + 5 * 64)  # untied: embedding and head; 2 × 2 + 1 norms
    assert p.terms_mib["frozen base"] == pytest.approx((nf4 + fp32) / MIB)
    assert p.terms_mib["LoRA + AdamW"] == pytest.approx(lora_params(d, 4) * ADAM_BYTES_PER_PARAM / MIB)
    assert p.terms_mib["activations"] == pytest.approx(100 * 2 * 64 * 100 / MIB)
    assert p.terms_mib["logits"] == pytest.approx(100 * 1000 * 4 / MIB)
    assert p.train_mib == pytest.approx(sum(p.terms_mib.values()))
    checkpoint = 4 * (2 * linear_params(d)) + fp32  # the fp32 safetensors read while loading
    assert p.load_mib == pytest.approx(500 + (1.0 * checkpoint + nf4 + fp32) / MIB)
    assert p.peak_mib == max(p.train_mib, p.load_mib)
    flops = step_flops(d, 100, False)
    assert p.s_per_step == pytest.approx(flops / 1e9 + 2 * 2 * linear_params(d) / 1e8 + 0.5)
    on = predict_finetune(d, cal, tokens=100, lora_r=4, checkpointing=True)
    assert on.terms_mib["activations"] == pytest.approx(p.terms_mib["activations"] / 10)


def test_loading_reads_the_checkpoint_files_bytes_where_they_are_known():
    cal = dataclasses.replace(HAND_CAL, load_factor=1.5)
    fp32 = predict_finetune(HAND, cal, tokens=3, lora_r=2, checkpointing=False)
    bf16 = predict_finetune(HAND, cal, tokens=3, lora_r=2, checkpointing=False, files=2 * (160 + 40 + 12))
    assert (fp32.load_mib - bf16.load_mib) * MIB == pytest.approx(1.5 * 2 * (160 + 40 + 12))  # half the bytes read


def test_accumulation_adds_time_not_memory():
    """Gradient accumulation runs micro-batches one after another: memory holds one, the step's time adds them."""
    cal = HAND_CAL
    one = predict_finetune(HAND, cal, tokens=3, lora_r=2, checkpointing=False)
    four = predict_finetune(HAND, cal, tokens=3, lora_r=2, checkpointing=False, accum=4)
    assert four.peak_mib == one.peak_mib and four.terms_mib == one.terms_mib
    assert four.s_per_step - 0.5 == pytest.approx(4 * (one.s_per_step - 0.5))


def test_plain_lora_holds_every_weight_at_its_width_and_dequantizes_nothing():
    """--method lora loads the whole base in one type (bf16: 2 bytes a weight; fp32: 4), where QLoRA keeps NF4
    linears beside fp32 embeddings and norms; a step has no NF4 weight to dequantize."""
    cal = HAND_CAL
    qlora = predict_finetune(HAND, cal, tokens=3, lora_r=2, checkpointing=False)
    lora = predict_finetune(HAND, cal, tokens=3, lora_r=2, checkpointing=False, method="lora")
    half = predict_finetune(HAND, cal, tokens=3, lora_r=2, checkpointing=False, method="lora", width=2)
    linears, others = HAND.layers * linear_params(HAND), 10 * 4 + 3 * 4  # tied embedding; two norms and the last
    assert qlora.terms_mib["frozen base"] * MIB == pytest.approx(linears * NF4_BITS / 8 + 4 * others)
    assert lora.terms_mib["frozen base"] * MIB == 4 * (linears + others)
    assert half.terms_mib["frozen base"] * MIB == 2 * (linears + others)
    assert qlora.s_per_step - lora.s_per_step == pytest.approx(2 * linears / 1e8)


def test_a_full_fine_tune_trains_every_weight_with_adamw_and_freezes_nothing():
    """--method full: 16 bytes for each of the 212 weights (fp32 weight, gradient, two moments) and no frozen base;
    loading holds the fp32 model; a step adds the weight gradients' FLOPs and AdamW's update of every weight, and
    dequantizes nothing."""
    cal = HAND_CAL
    full = predict_finetune(HAND, cal, tokens=3, lora_r=2, checkpointing=False, method="full")
    lora = predict_finetune(HAND, cal, tokens=3, lora_r=2, checkpointing=False, method="lora")
    weights = 160 + 10 * 4 + 3 * 4  # the linears; the tied embedding; two norms and the last
    assert full.terms_mib["frozen base"] == 0 and full.terms_mib["weights + AdamW"] * MIB == 16 * weights
    assert "LoRA + AdamW" not in full.terms_mib and lora.terms_mib["LoRA + AdamW"] * MIB == 16 * 2 * (4 * 8 + 3 * 12)
    assert full.load_mib * MIB == 500 * MIB + 4 * weights + 4 * weights  # the checkpoint read, the model built
    flops = 6 * 3 * (160 + 40)  # forward, input and weight gradients, the head included
    assert full.s_per_step == pytest.approx(flops / 1e9 + 0.5 + weights / 1e6)


def test_a_16bit_base_is_the_bytes_of_the_model_transformers_loads_in_bf16(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    stored = sum(p.numel() * p.element_size() for p in model.parameters())  # a tied head is one parameter
    assert stored == frozen_bytes(Dims.from_config(tiny_model), quantized=False, width=2)


@pytest.mark.parametrize("bits", [8, 32])
def test_the_optimizer_states_are_what_bitsandbytes_allocates(bits):
    """Every adapter matrix of a 3-layer shape through one step of bitsandbytes' AdamW (8- and 32-bit, the states
    its paged variants keep on CUDA): the bytes of its state tensors, shared code maps once, against the formula.
    r 8 × hidden 576 takes 8-bit moments; r 8 × a 64-wide projection stays in 32 bits (under 4096 values)."""
    import torch

    d = Dims(layers=3, hidden=576, heads=1, kv_heads=1, head_dim=64, intermediate=1536, vocab=10, max_positions=64,
             tied=True)  # fmt: skip
    params = [torch.nn.Parameter(torch.zeros(shape)) for _ in range(d.layers) for shape in lora_shapes(d, 8)]
    assert sum(p.numel() for p in params) == lora_params(d, 8)
    assert adamw_state_allocated(params, bits) == adamw_state_bytes(adapter_sizes(d, 8), bits)


def adamw_state_allocated(params, bits: int) -> int:
    """Bytes of the state tensors bitsandbytes' AdamW (8- or 32-bit) allocates in one step over `params`, each
    storage once (the code maps are shared)."""
    import bitsandbytes as bnb
    import torch

    optim = (bnb.optim.AdamW8bit if bits == 8 else bnb.optim.AdamW32bit)(params, lr=1e-3)
    for p in params:
        p.grad = torch.ones_like(p)
    optim.step()
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for p in params for t in optim.state[p].values() if torch.is_tensor(t)}  # fmt: skip
    return sum(storages.values())


def test_the_gpu_prediction_is_its_terms_and_the_cuda_context():
    """QLoRA and LoRA on a bf16 base differ by the frozen base alone; adapters and their gradients are fp32 (8 bytes
    a parameter) under either; a full fine-tune has no frozen base and trains every weight (counted by hand); the
    device figure adds the CUDA context allowance."""
    cal = HAND_CAL
    q = predict_gpu(HAND, cal, tokens=3, lora_r=2, checkpointing=False, method="qlora", optim_bits=32)
    h = predict_gpu(HAND, cal, tokens=3, lora_r=2, checkpointing=True, method="lora-16bit", optim_bits=32)
    f = predict_gpu(HAND, cal, tokens=3, lora_r=2, checkpointing=True, method="full", optim_bits=8)
    assert q.terms_mib["frozen base"] * MIB == pytest.approx(frozen_bytes(HAND, True, 4))
    assert h.terms_mib["frozen base"] * MIB == 2 * (HAND.layers * linear_params(HAND) + 10 * 4 + 3 * 4)
    assert q.terms_mib["trained + gradients"] * MIB == 8 * lora_params(HAND, 2)
    assert q.terms_mib["AdamW states"] * MIB == 8 * lora_params(HAND, 2)  # every matrix under 4096: 32-bit states
    assert q.terms_mib["activations"] * MIB == 3 * 1 * 4 * 100 and h.terms_mib["activations"] * MIB == 3 * 4 * 10
    assert q.terms_mib["logits"] * MIB == 3 * 10 * 4
    weights = 4 * 4 * 4 + 3 * 4 * 8 + 2 * 4 + 10 * 4 + 4  # 7 linears, 2 norms, the tied embedding, the final norm
    assert f.terms_mib["frozen base"] == 0 and f.terms_mib["trained + gradients"] * MIB == 8 * weights
    assert f.terms_mib["AdamW states"] * MIB == 8 * weights  # 8-bit asked, but every tensor is under 4096
    assert q.allocated_mib == pytest.approx(sum(q.terms_mib.values()))
    assert [g.method for g in (q, h, f)] == list(GPU_METHODS) and q.device_mib - q.allocated_mib == CUDA_CONTEXT_MIB


@pytest.mark.parametrize("bits", [8, 32])
def test_a_full_fine_tunes_weights_and_optimizer_states_are_what_the_model_and_bitsandbytes_hold(tiny_model, bits):
    """weight_sizes against the tensors transformers builds (a tied head counted once), and their AdamW states
    against one step of bitsandbytes' AdamW over the model's own parameters (the states its paged variants keep)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    params = list(model.parameters())
    d = Dims.from_config(tiny_model)
    assert sorted(p.numel() for p in params) == sorted(weight_sizes(d))
    assert adamw_state_allocated(params, bits) == adamw_state_bytes(weight_sizes(d), bits)
    assert bits == 32 or any(n >= 4096 for n in weight_sizes(d))  # the 8-bit rule is exercised

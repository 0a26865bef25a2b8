"""QLoRA vs 16-bit LoRA on a Llama-7B-shaped model with random weights, on one CUDA GPU.

Each recipe runs in its own process so peak-memory counters start clean:
  qlora  NF4 + double quant base, LoRA r=16 on all linears, paged AdamW 8-bit, grad checkpointing
  lora16 bf16 base, the same LoRA, AdamW (torch), grad checkpointing
batch 1 x seq 512, a few steps; prints peak VRAM (torch.cuda.max_memory_allocated) and step time.
The base is built layer by layer on the GPU and quantized as it is made, so the QLoRA run never
holds a 16-bit 7B copy. Seed claim: ~28 GB (LoRA 16-bit) vs ~12-16 GB (QLoRA); our goal: QLoRA <= 8 GB.

    python benchmarks/gpu_qlora_memory.py [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

LLAMA_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}
DEVICE = "cuda"  # a module constant so the construction can be smoke-tested on a CPU with a tiny shape
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(recipe: str):
    """The model on the GPU; for qlora each target linear is quantized as soon as its weights exist."""
    import bitsandbytes as bnb
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = LlamaConfig(**LLAMA_7B, tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    torch.manual_seed(0)
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if not (isinstance(child, torch.nn.Linear) and child_name in TARGETS):
                continue
            w = torch.randn(child.out_features, child.in_features, device=DEVICE, dtype=torch.bfloat16) * 0.02
            if recipe == "qlora":
                q = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=False,
                    device="meta",
                    compute_dtype=torch.bfloat16,
                    compress_statistics=True,
                    quant_type="nf4",
                )
                q.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=True, quant_type="nf4").to(
                    DEVICE
                )  # quantizes on the move
                setattr(mod, child_name, q)
            else:
                child.weight = torch.nn.Parameter(w, requires_grad=False)
            del w
    for mod in model.modules():  # what is left on meta: embeddings, norms, lm_head
        for pname, p in list(mod.named_parameters(recurse=False)):
            if p.is_meta:
                is_norm = "norm" in type(mod).__name__.lower()
                data = torch.ones(p.shape, dtype=torch.bfloat16) if is_norm else torch.randn(p.shape) * 0.02
                data = data.to(device=DEVICE, dtype=torch.bfloat16)
                setattr(mod, pname, torch.nn.Parameter(data, requires_grad=False))
    with torch.device(DEVICE):
        model.model.rotary_emb = LlamaRotaryEmbedding(cfg)
    model.config.use_cache = False
    return model


def child(recipe: str, steps: int) -> dict:
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model

    model = build(recipe)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = bnb.optim.PagedAdamW8bit(params, lr=1e-4) if recipe == "qlora" else torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, LLAMA_7B["vocab_size"], (1, 512), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {
        "recipe": recipe,
        "peak_vram_gib": torch.cuda.max_memory_allocated() / 2**30,
        "step_s_median": sorted(times[1:])[len(times[1:]) // 2],
        "loss": float(loss),
        "gpu": torch.cuda.get_device_name(0),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--child", choices=["qlora", "lora16"])
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    rows = []
    for recipe in ("qlora", "lora16"):
        p = subprocess.run(
            [sys.executable, __file__, "--child", recipe, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            timeout=420,
        )
        if p.returncode != 0:
            print(f"{recipe}: failed\n{p.stderr[-3000:]}")
            continue
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    for r in rows:
        print(f"{r['recipe']:7} peak VRAM {r['peak_vram_gib']:6.2f} GiB  step {r['step_s_median']:.2f} s  ({r['gpu']})")
    print("seed: LoRA 16-bit ~28 GB, QLoRA ~12-16 GB; goal: QLoRA <= 8 GB")


if __name__ == "__main__":
    main()

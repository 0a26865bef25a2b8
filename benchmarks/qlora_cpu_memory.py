"""edgeq's QLoRA recipe vs the plain transformers + peft + bitsandbytes recipe, side by side.

Same model (embedded SmolLM2-135M-Instruct), same data (examples/drone/train.jsonl), same batch
(8) and sequence length (128, every row padded to it), CPU. Each recipe runs in a fresh process;
we report its peak RSS (the process's whole life: imports, load, training) and the median step
time (first step excluded as warm-up), then the ratios edgeq / plain.

    python benchmarks/qlora_cpu_memory.py [--steps 6] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

BATCH, SEQ = 8, 128


def batches(tokenizer, n_steps: int, with_assistant_mask: bool):
    import torch

    from edgeq.data import IGNORE, read_jsonl, tokenize_conversation

    rows = [tokenize_conversation(tokenizer, m) for m in read_jsonl("examples/drone/train.jsonl")[: BATCH * n_steps]]
    out = []
    for i in range(n_steps):
        ids = torch.full((BATCH, SEQ), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((BATCH, SEQ), IGNORE, dtype=torch.long)
        mask = torch.zeros((BATCH, SEQ), dtype=torch.long)
        for j, ex in enumerate(rows[i * BATCH : (i + 1) * BATCH]):
            n = min(len(ex.input_ids), SEQ)
            ids[j, :n] = torch.tensor(ex.input_ids[:n])
            mask[j, :n] = 1
            # plain recipe: every real token is a label (the usual causal-LM collator); edgeq: answers only
            labels[j, :n] = torch.tensor(ex.labels[:n] if with_assistant_mask else ex.input_ids[:n])
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def child(recipe: str, steps: int) -> dict:
    import torch
    from transformers import AutoTokenizer

    from edgeq.basemodel import ensure_default_model
    from edgeq.finetune import FinetuneConfig, load_model, quantized_bits_per_param, train_step

    torch.manual_seed(0)
    base = ensure_default_model()
    tok = AutoTokenizer.from_pretrained(base)
    if recipe == "plain":
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        q = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        model = AutoModelForCausalLM.from_pretrained(
            base, quantization_config=q, dtype=torch.float32, device_map={"": "cpu"}
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        lora = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        )
        model = get_peft_model(model, lora)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(b):
            loss = model(**b).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss)
    else:
        # checkpointing as recorded in RESULTS (the recipe's memory-lean setting; the CPU default is off)
        cfg = FinetuneConfig(data="examples/drone/train.jsonl", out="-", lr=1e-4, gradient_checkpointing=True)
        model = load_model(base, cfg, "cpu")
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(b):
            return train_step(model, opt, [b], cfg, world=1)

    bits = quantized_bits_per_param(model)["bits_per_param"]
    model.train()
    times, losses = [], []
    for b in batches(tok, steps, with_assistant_mask=recipe == "edgeq"):
        t = time.perf_counter()
        losses.append(step(b))
        times.append(time.perf_counter() - t)
    return {
        "recipe": recipe,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_s_median": statistics.median(times[1:]),
        "step_s_all": times,
        "losses": losses,
        "bits_per_param": bits,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=["plain", "edgeq"])
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    res = {}
    for recipe in ("plain", "edgeq"):
        p = subprocess.run(
            [sys.executable, __file__, "--child", recipe, "--steps", str(args.steps)],
            capture_output=True,
            text=True,
            check=True,
        )
        res[recipe] = json.loads(p.stdout.strip().splitlines()[-1])
    ratio = {
        "peak_rss": res["edgeq"]["peak_rss_mib"] / res["plain"]["peak_rss_mib"],
        "step_time": res["edgeq"]["step_s_median"] / res["plain"]["step_s_median"],
    }
    if args.json:
        print(json.dumps({"results": res, "ratio": ratio}, indent=2))
        return
    print(f"SmolLM2-135M QLoRA (NF4 + double quant, LoRA r=16 all linears), CPU, batch {BATCH} x seq {SEQ}")
    print(f"{'recipe':8} {'peak RSS MiB':>13} {'s/step (median)':>16} {'bits/param':>11}")
    for r in res.values():
        print(f"{r['recipe']:8} {r['peak_rss_mib']:13.0f} {r['step_s_median']:16.2f} {r['bits_per_param']:11.3f}")
    print(
        f"ratio edgeq/plain: peak RSS {ratio['peak_rss']:.2f}x (target <= 0.35), "
        f"step time {ratio['step_time']:.2f}x (target <= 1.0)"
    )
    print("QLoRA paper, NF4 + double quantization: 4.127 bits/param")


if __name__ == "__main__":
    main()

"""How close the default fine-tune runs to this CPU's own matrix-multiply speed, and where the rest of a step goes.

    python benchmarks/finetune_roofline.py [--steps 3]

In one run, on the default QLoRA recipe and the drone data (the steps a build would take first):
- the roofline: torch matmul's FLOP/s in fp32 and in bf16 at the fine-tune's own shapes (each linear of a layer
  and the head, at a micro-batch's real token count), timed here;
- the fine-tune's useful FLOP/s: FLOPs counted from the model's shapes and the real tokens (padding excluded, the
  recomputation of checkpointed activations excluded) over the measured seconds per step;
- their ratio, against the compute type the fine-tune runs in here;
- the share of a step taken by padding, NF4 dequantization, the loss over the full vocabulary and the optimizer
  (what gradient checkpointing costs: benchmarks/finetune_speed.py).

Useful FLOPs per micro-batch (2 per multiply-add): each frozen linear twice over the real tokens (forward, input
gradient); each adapter three times (forward, input and weight gradient); the head at the labelled positions
twice (the loss is taken only there); attention scores and values over each example's causal triangle, twice.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from importlib.resources import files

from edgeq.spec import BUILD_EXAMPLE_DATA, SHIPPED_EXAMPLES


def useful_flops(d, r: int, batch: dict) -> float:
    """Useful FLOPs of one micro-batch: see the module's docstring."""
    from edgeq.finetune import labelled_tokens
    from edgeq.trainplan import linear_params, lora_params

    lengths = batch["attention_mask"].sum(1).tolist()  # each example's real tokens
    tokens = sum(lengths)
    linears = 2 * 2 * tokens * d.layers * linear_params(d)
    adapters = 3 * 2 * tokens * lora_params(d, r)
    head = 2 * 2 * labelled_tokens(batch) * d.vocab * d.hidden
    attention = 2 * sum(2 * 2 * n * (n + 1) / 2 * d.heads * d.head_dim for n in lengths) * d.layers
    return linears + adapters + head + attention


def gemm_flops_per_s(d, tokens: int, dtype, budget_s: float = 2.0, most: int = 5) -> float:
    """torch matmul's FLOP/s over one micro-batch's forward linears and head at `tokens` rows, in `dtype`: each
    distinct shape timed alone (the best of its repeats, as many as fit `budget_s` up to `most`, at least one), then
    weighted by how often a micro-batch multiplies at it. One repeat of every layer's linears would take minutes
    where the CPU only emulates bf16 (AVX2 without AVX-512 BF16 or AMX)."""
    import torch

    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    count: Counter = Counter()  # (in, out) → matmuls a micro-batch's forward takes at that shape
    for shape in [(d.hidden, q), (d.hidden, kv), (d.hidden, kv), (q, d.hidden), (d.hidden, d.intermediate),
                  (d.hidden, d.intermediate), (d.intermediate, d.hidden)]:  # fmt: skip
        count[shape] += d.layers
    count[(d.hidden, d.vocab)] += 1
    flops = seconds = 0.0
    for (i, o), n in count.items():
        x, w = torch.randn(tokens, i, dtype=dtype), torch.randn(i, o, dtype=dtype)
        best, spent, reps = float("inf"), 0.0, 0
        while reps < 1 or (spent < budget_s and reps < most):
            t = time.perf_counter()
            x @ w
            took = time.perf_counter() - t
            best, spent, reps = min(best, took), spent + took, reps + 1
        flops += 2 * tokens * i * o * n
        seconds += best * n
    return flops / seconds


def loss_seconds(run, batch: dict, chunk: int, reps: int = 3) -> float:
    """Forward and backward of the loss over the full vocabulary alone, on this micro-batch's labelled positions."""
    import torch

    from edgeq.finetune import causal_lm, chunked_loss

    inner = causal_lm(run.model)
    hidden = torch.randn(*batch["input_ids"].shape, inner.config.hidden_size, requires_grad=True)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        loss, _ = chunked_loss(hidden, batch["labels"], inner.lm_head.weight, chunk)
        loss.backward()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from edgeq.finetune import FinetuneConfig, batches_for, collate, compute_dtype, pad_id, setup, train_step
    from edgeq.footprint import Dims

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps (after one warm-up)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cfg = FinetuneConfig(data=str(files(SHIPPED_EXAMPLES) / BUILD_EXAMPLE_DATA), out=out)
        run = setup(cfg)
        run.model.train()
        cfg, d = run.cfg, Dims.from_config(run.base_dir)  # the settings setup() chose (checkpointing, batch)
        pad = pad_id(run.tokenizer)
        steps = [[collate(mb, pad, "cpu") for mb in batches_for(run, s)] for s in range(args.steps + 2)]
        train_step(run.model, run.optim, steps[0], cfg, 1)  # warm-up
        t = time.perf_counter()
        for micro in steps[1 : args.steps + 1]:
            train_step(run.model, run.optim, micro, cfg, 1)
        per_step = (time.perf_counter() - t) / args.steps
        timed = [mb for micro in steps[1 : args.steps + 1] for mb in micro]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train_step(run.model, run.optim, steps[-1], cfg, 1)
        profiled = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
        dequant = sum(e.self_cpu_time_total for e in prof.key_averages() if "dequantize_4bit" in e.key) / 1e6
        optimizer = sum(e.cpu_time_total for e in prof.key_averages() if e.key.startswith("Optimizer.step")) / 1e6

        real = sum(int(mb["attention_mask"].sum()) for mb in timed)
        padded = sum(mb["attention_mask"].numel() for mb in timed)
        flops = sum(useful_flops(d, cfg.lora_r, mb) for mb in timed) / args.steps
        mean_rows = real // len(timed)
        dtype = compute_dtype("cpu")  # what the 4-bit linears dequantize to and multiply in
        roof = {name: gemm_flops_per_s(d, mean_rows, getattr(torch, name)) for name in ("float32", "bfloat16")}
        loss = sum(loss_seconds(run, mb, cfg.loss_chunk) for mb in steps[-1])

    achieved = flops / per_step
    print(f"model: {d.layers} layers, hidden {d.hidden}, vocab {d.vocab}; LoRA r {cfg.lora_r}; batch "
          f"{cfg.batch_size} × {cfg.grad_accum}; gradient checkpointing {cfg.gradient_checkpointing}")  # fmt: skip
    print(f"seconds per step ({args.steps} steps): {per_step:.2f}; useful GFLOP per step {flops / 1e9:.1f}")
    print(f"useful FLOP/s: {achieved / 1e9:.1f} G")
    for name, r in roof.items():
        print(f"torch matmul {name} at the fine-tune's shapes ({mean_rows} rows): {r / 1e9:.1f} GFLOP/s")
    print(f"the fine-tune computes in {dtype}: ratio useful / roofline = {achieved / roof[dtype]:.2f}")
    print(f"ratio against the faster of the two types: {achieved / max(roof.values()):.2f}")
    print(f"padding: {100 * (1 - real / padded):.1f} % of the tokens computed")
    print(f"NF4 dequantization: {100 * dequant / profiled:.1f} % of the profiled step's CPU time")
    print(f"optimizer (clip excluded): {100 * optimizer / profiled:.1f} % of the profiled step's CPU time")
    print(f"loss over the full vocabulary (forward + backward, alone): {100 * loss / per_step:.1f} % of a step")


if __name__ == "__main__":
    main()

"""The fine-tune's plan against real runs: peak RSS and seconds per step of `edgeq finetune` (QLoRA, NF4 + double
quantization, LoRA r 16 on every linear layer, batch 4 of the drone data) on random-weight models of several
shapes, with activations kept and recomputed, each run in a fresh process; beside each, what trainplan.py
predicts for it before any training. Shapes 135M and above were never used to fit trainplan's constants.

    python benchmarks/finetune_plan.py [--steps 3] [--points FILE]   (FILE: runs to reuse; new ones are added)

benchmarks/finetune_plan_points.json holds the runs of 2026-12-06 (2-core AMD EPYC, AVX-512 BF16).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path


# name → random_model overrides (the default tokenizer: vocabulary 49152, tied embedding)
def _shape(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> dict:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": 64,
        "intermediate_size": intermediate,
    }


SHAPES = {
    "17M": _shape(256, 6, 4, 2, 768),
    "135M": _shape(576, 30, 9, 3, 1536),
    "200M-gqa4": _shape(1024, 12, 16, 4, 4096),
    "360M": _shape(960, 32, 15, 5, 2560),
}
FIT = ("17M", "135M")  # trainplan's constants come from these; the others are out of sample
BATCHES = {"17M": (4, 16), "135M": (4, 16)}  # two batch sizes separate the activations from the rest


def one(model: str, on: bool, steps: int, batch: int, method: str = "qlora") -> dict:
    """In a fresh process: set up the default recipe (or --method `method`), one warm-up step, then `steps` timed
    ones."""
    from edgeq.finetune import FinetuneConfig, batches_for, collate, labelled_tokens, pad_id, setup, train_step
    from edgeq.spec import BUILD_EXAMPLE_DATA, SHIPPED_EXAMPLES

    with tempfile.TemporaryDirectory() as out:
        data = str(files(SHIPPED_EXAMPLES) / BUILD_EXAMPLE_DATA)
        cfg = FinetuneConfig(data=data, out=out, base=model, gradient_checkpointing=on, batch_size=batch, method=method)
        run = setup(cfg)
        run.model.train()
        batches = [[collate(mb, pad_id(run.tokenizer), "cpu") for mb in batches_for(run, s)] for s in range(steps + 1)]
        train_step(run.model, run.optim, batches[0], cfg, 1)
        times = []
        for b in batches[1:]:
            t = time.perf_counter()
            train_step(run.model, run.optim, b, cfg, 1)
            times.append(time.perf_counter() - t)
        padded = [sum(mb["input_ids"].numel() for mb in b) for b in batches[1:]]
        return {
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "s_per_step": statistics.median(times),
            "tokens_per_step": statistics.median(padded),
            "longest": max(mb["input_ids"].shape[1] for b in batches for mb in b),
            "labelled": statistics.median(sum(labelled_tokens(mb) for mb in b) for b in batches[1:]),
        }


def measure(root: Path, steps: int, done: list[dict]) -> list[dict]:
    """Every (shape, batch, checkpointing) run not in `done`, each in a fresh process."""
    from edgeq.basemodel import ensure_default_model, random_model

    have = {(p["shape"], p["batch"], p["checkpointing"]) for p in done}
    points = list(done)
    for name, shape in SHAPES.items():
        model = random_model(root / name, ensure_default_model(), **shape, max_position_embeddings=2048)
        for batch in BATCHES.get(name, (4,)):
            for on in (False, True):
                if (name, batch, on) in have:
                    continue
                call = f"b.one({str(model)!r}, {on}, {steps}, {batch})"
                code = f"import json, benchmarks.finetune_plan as b; print(json.dumps({call}))"
                r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                point = {"shape": name, "batch": batch, "checkpointing": on, **json.loads(r.stdout.splitlines()[-1])}
                print(json.dumps(point), flush=True)
                points.append(point)
    return points


def other_methods(steps: int, methods: list[str]) -> None:
    """--method lora (the base in finetune.compute_dtype) and full (every weight in fp32) on the default model,
    batch 4 and 16, checkpointing off and on, each in a fresh process: peak RSS and seconds per step measured
    against trainplan's prediction. trainplan's constants were fitted on QLoRA runs only: every point here is out of
    sample."""
    from edgeq.basemodel import ensure_default_model
    from edgeq.finetune import FinetuneConfig, checkpoint_size, dtype_bytes, weights_dtype
    from edgeq.footprint import Dims
    from edgeq.machine import platform_info
    from edgeq.trainplan import CALIBRATION, predict_finetune

    model = ensure_default_model()
    print(f"CPU: {platform_info()['cpu']}; the default model, batch × longest row of the drone data")
    print("| method | batch | checkpointing | padded tokens | peak RSS MiB measured → predicted | s/step → predicted |")
    print("|---|---|---|---|---|---|")
    for method in methods:
        width = dtype_bytes(weights_dtype(FinetuneConfig(data="", out="", method=method), "cpu"))
        for batch in (4, 16):
            for on in (False, True):
                call = f"b.one({str(model)!r}, {on}, {steps}, {batch}, {method!r})"
                code = f"import json, benchmarks.finetune_plan as b; print(json.dumps({call}))"
                r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                p = json.loads(r.stdout.splitlines()[-1])
                d, files = Dims.from_config(model), checkpoint_size(model)
                pr = predict_finetune(d, CALIBRATION, p["tokens_per_step"], 16, on, files, 1, method, width)
                em, et = pr.peak_mib / p["peak_rss_mib"] - 1, pr.s_per_step / p["s_per_step"] - 1
                memory = f"{p['peak_rss_mib']:.0f} → {pr.peak_mib:.0f} ({100 * em:+.1f} %)"
                time_ = f"{p['s_per_step']:.2f} → {pr.s_per_step:.2f} ({100 * et:+.1f} %)"
                row = (
                    f"| {method} ({width * 8}-bit base) | {batch} | {'on' if on else 'off'} | {p['tokens_per_step']} |"
                )
                print(f"{row} {memory} | {time_} |", flush=True)


def adamw_rate(steps: int = 5, fused: bool = True) -> float:
    """fp32 parameters AdamW, as edgeq finetune configures it on a CPU (or, fused=False, torch's default per-tensor
    loop), updates per second, over tensors of the default model's shapes with a gradient each: the optimizer's share
    of a full fine-tune's step."""
    import torch

    from edgeq.basemodel import ensure_default_model
    from edgeq.finetune import cpu_adamw
    from edgeq.footprint import Dims

    d = Dims.from_config(ensure_default_model())
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    shapes = [(d.vocab, d.hidden)] + d.layers * [(q, d.hidden), (kv, d.hidden), (kv, d.hidden), (d.hidden, q)]
    shapes += d.layers * [(d.intermediate, d.hidden), (d.intermediate, d.hidden), (d.hidden, d.intermediate)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    optim = cpu_adamw(params, 1e-4) if fused else torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    optim.step()  # the moments are allocated here: not part of a step's cost
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        optim.step()
        times.append(time.perf_counter() - t)
    return sum(p.numel() for p in params) / statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--points", type=Path)
    ap.add_argument("--methods", nargs="*", help="measure these --method values on the default model instead")
    ap.add_argument("--adamw", action="store_true", help="measure AdamW's fp32 update rate (parameters per second)")
    a = ap.parse_args()
    if a.adamw:
        fused, loop = adamw_rate(), adamw_rate(fused=False)
        print(f"AdamW: {fused:.3g} fp32 parameters per second fused (edgeq), {loop:.3g} torch's default loop")
        return
    if a.methods:
        other_methods(a.steps, a.methods)
        return
    done = json.loads(a.points.read_text()) if a.points and a.points.is_file() else []
    with tempfile.TemporaryDirectory() as root:
        points = measure(Path(root), a.steps, done)
    if a.points:
        a.points.write_text(json.dumps(points, indent=1))
    report(points)


def _dims(name: str):
    from edgeq.footprint import Dims

    sh = SHAPES[name]
    return Dims(
        layers=sh["num_hidden_layers"],
        hidden=sh["hidden_size"],
        heads=sh["num_attention_heads"],
        kv_heads=sh["num_key_value_heads"],
        head_dim=sh["head_dim"],
        intermediate=sh["intermediate_size"],
        vocab=49152,
        max_positions=2048,
        tied=True,
    )


def fit(points: list[dict]):
    """trainplan's constants by least squares on the FIT shapes. Memory: each point is bound by the load or by
    training, whichever the current constants predict higher; classify, solve, repeat until it settles."""
    import numpy as np

    from edgeq.trainplan import (
        ADAM_BYTES_PER_PARAM,
        MIB,
        NF4_BITS,
        FinetuneCalibration,
        checkpoint_bytes,
        linear_params,
        lora_params,
        other_params,
        passes,
        step_flops,
    )

    pts = [p for p in points if p["shape"] in FIT]
    coef = np.array([600 * MIB, 1.0, 100.0, 10.0, 1.0])  # base, load factor, kept, checkpointed, logits
    for _ in range(20):
        rows, ys = [], []
        for p in pts:
            d = _dims(p["shape"])
            frozen = d.layers * linear_params(d) * NF4_BITS / 8 + 4 * other_params(d)
            act = p["tokens_per_step"] * d.layers * d.hidden
            logits = p["tokens_per_step"] * d.vocab
            train_row = [1.0, 0.0, 0.0 if p["checkpointing"] else act, act if p["checkpointing"] else 0.0, logits]
            load_row = [1.0, checkpoint_bytes(d), 0.0, 0.0, 0.0]
            lora = lora_params(d, 16) * ADAM_BYTES_PER_PARAM
            train = np.dot(coef, train_row) + frozen + lora
            load = np.dot(coef, load_row) + frozen
            row, y = (
                (train_row, p["peak_rss_mib"] * MIB - frozen - lora)
                if train >= load
                else (load_row, p["peak_rss_mib"] * MIB - frozen)
            )
            rows.append(np.array(row) / y)  # relative error
            ys.append(1.0)
        coef = np.linalg.lstsq(np.array(rows), np.array(ys), rcond=None)[0]
    t_rows = []
    for p in pts:
        d = _dims(p["shape"])
        n = passes(p["checkpointing"])
        row = [step_flops(d, p["tokens_per_step"], p["checkpointing"]), n * d.layers * linear_params(d), 1.0]
        t_rows.append(np.array(row) / p["s_per_step"])
    t = np.linalg.lstsq(np.array(t_rows), np.ones(len(pts)), rcond=None)[0]
    return FinetuneCalibration(
        base_mib=round(float(coef[0]) / MIB, 1),
        load_factor=round(float(coef[1]), 3),
        kept_bytes=round(float(coef[2]), 1),
        checkpointed_bytes=round(float(coef[3]), 1),
        logit_bytes=round(float(coef[4]), 2),
        flops_per_s=float(f"{1 / t[0]:.3g}"),
        dequant_per_s=float(f"{1 / t[1]:.3g}"),
        step_s=round(float(t[2]), 3),
    )


def report(points: list[dict]) -> None:
    from edgeq.machine import platform_info
    from edgeq.trainplan import CALIBRATION, predict_finetune

    fitted = fit(points)
    print(f"fitted on {', '.join(FIT)}: {fitted}")
    print(f"shipped (trainplan.CALIBRATION): {CALIBRATION}")
    print(f"CPU: {platform_info()['cpu']}; batch × longest row of the drone data, 3 timed steps after one warm-up")
    print(
        "| shape | batch | checkpointing | tokens | peak RSS MiB measured → predicted | s/step measured → predicted |"
    )
    print("|---|---|---|---|---|---|")
    worst = {"memory": 0.0, "time": 0.0}
    for p in points:
        pr = predict_finetune(_dims(p["shape"]), CALIBRATION, p["tokens_per_step"], 16, p["checkpointing"])
        em, et = pr.peak_mib / p["peak_rss_mib"] - 1, pr.s_per_step / p["s_per_step"] - 1
        sample = "fit" if p["shape"] in FIT else "out of sample"
        if sample != "fit":
            worst = {"memory": max(worst["memory"], abs(em)), "time": max(worst["time"], abs(et))}
        print(
            f"| {p['shape']} ({sample}) | {p['batch']} | {'on' if p['checkpointing'] else 'off'} | "
            f"{p['tokens_per_step']} | {p['peak_rss_mib']:.0f} → {pr.peak_mib:.0f} ({100 * em:+.1f} %) | "
            f"{p['s_per_step']:.2f} → {pr.s_per_step:.2f} ({100 * et:+.1f} %) |"
        )
    print(f"out of sample, worst: memory {100 * worst['memory']:.1f} %, time {100 * worst['time']:.1f} %")


if __name__ == "__main__":
    main()

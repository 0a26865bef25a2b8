"""What gradient checkpointing costs a CPU fine-tune: seconds per optimizer step and peak RSS of the default
QLoRA recipe on the drone data, with activations recomputed in backward (on) and kept (off), each in a fresh
process, alternated so a drifting machine speed hits both alike. Also checks both give the same losses.

    python benchmarks/checkpointing.py [--rounds 2] [--steps 5]
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


def one(on: bool, steps: int) -> dict:
    from edgeq.finetune import FinetuneConfig, batches_for, collate, pad_id, setup, train_step
    from edgeq.spec import BUILD_EXAMPLE_DATA, SHIPPED_EXAMPLES

    with tempfile.TemporaryDirectory() as out:
        cfg = FinetuneConfig(data=str(files(SHIPPED_EXAMPLES) / BUILD_EXAMPLE_DATA), out=out, gradient_checkpointing=on)
        run = setup(cfg)
        run.model.train()
        batches = [[collate(mb, pad_id(run.tokenizer), "cpu") for mb in batches_for(run, s)] for s in range(steps + 1)]
        train_step(run.model, run.optim, batches[0], cfg, 1)  # warm-up
        t, cpu = time.perf_counter(), time.process_time()
        losses = [train_step(run.model, run.optim, micro, cfg, 1) for micro in batches[1:]]
        return {
            "s_per_step": (time.perf_counter() - t) / steps,
            "cpu_s_per_step": (time.process_time() - cpu) / steps,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "losses": losses,
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(one(a.child == "on", a.steps)))
        return
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for _ in range(a.rounds):
        for mode in runs:
            cmd = [sys.executable, __file__, "--child", mode, "--steps", str(a.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
            r = runs[mode][-1]
            print(
                f"checkpointing {mode:3}: {r['s_per_step']:.2f} s/step ({r['cpu_s_per_step']:.2f} CPU s), "
                f"peak RSS {r['peak_rss_mib']:.0f} MiB"
            )
    med = {m: statistics.median(r["s_per_step"] for r in rs) for m, rs in runs.items()}
    cpu = {m: statistics.median(r["cpu_s_per_step"] for r in rs) for m, rs in runs.items()}
    rss = {m: max(r["peak_rss_mib"] for r in rs) for m, rs in runs.items()}
    same = all(r["losses"] == runs["on"][0]["losses"] for rs in runs.values() for r in rs)
    print(
        f"median s/step: on {med['on']:.2f}, off {med['off']:.2f} (off/on {med['off'] / med['on']:.2f}x); "
        f"CPU s/step: on {cpu['on']:.2f}, off {cpu['off']:.2f} (off/on {cpu['off'] / cpu['on']:.2f}x)"
    )
    print(f"peak RSS: on {rss['on']:.0f} MiB, off {rss['off']:.0f} MiB; identical losses: {same}")


if __name__ == "__main__":
    main()

"""Where a default fine-tune step's time goes: torch.profiler over one optimizer step of the default QLoRA
recipe on the drone data (after a warm-up step), the top operators by self CPU time, and the share of
matrix multiplication and NF4 dequantization.

    python benchmarks/finetune_profile.py
"""

from __future__ import annotations

import tempfile
import time
from importlib.resources import files

from edgeq.spec import BUILD_EXAMPLE_DATA, SHIPPED_EXAMPLES


def main() -> None:
    from torch.profiler import ProfilerActivity, profile

    from edgeq.finetune import FinetuneConfig, batches_for, collate, pad_id, setup, train_step

    with tempfile.TemporaryDirectory() as out:
        cfg = FinetuneConfig(data=str(files(SHIPPED_EXAMPLES) / BUILD_EXAMPLE_DATA), out=out)
        run = setup(cfg)
        run.model.train()
        steps = [[collate(mb, pad_id(run.tokenizer), "cpu") for mb in batches_for(run, s)] for s in range(4)]
        train_step(run.model, run.optim, steps[0], cfg, 1)  # warm-up
        t = time.perf_counter()
        for micro in steps[1:3]:
            train_step(run.model, run.optim, micro, cfg, 1)
        print(f"seconds per step (2 steps, batch {cfg.batch_size}): {(time.perf_counter() - t) / 2:.2f}")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train_step(run.model, run.optim, steps[3], cfg, 1)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    share = {
        name: sum(e.self_cpu_time_total for e in events if e.key == key) / total
        for name, key in (("matmul (aten::mm)", "aten::mm"), ("NF4 dequantize", "bitsandbytes::dequantize_4bit"))
    }
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    for name, s in share.items():
        print(f"{name}: {100 * s:.1f} % of self CPU time")


if __name__ == "__main__":
    main()

"""The default fine-tune's step time and peak RSS with gradient checkpointing on (the QLoRA recipe's
default) vs off, side by side: each run in its own process, the same data, seed and steps.

    python benchmarks/finetune_speed.py [--steps 12]

Prints seconds per optimizer step, peak RSS and the final loss of each, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

from edgeq.spec import BUILD_EXAMPLE_DATA, SHIPPED_EXAMPLES

CHILD = """
import json, sys
from edgeq.finetune import FinetuneConfig, finetune
r = finetune(FinetuneConfig(data=sys.argv[1], out=sys.argv[2], max_steps=int(sys.argv[3]),
                            gradient_checkpointing=sys.argv[4] == "on", save_every=10**6, force=True))
print(json.dumps({"seconds": r.seconds, "steps": r.steps_run, "loss": r.train_loss_last,
                  "peak_rss_mib": r.peak_rss_mib}))
"""


def run(data: Path, steps: int, checkpointing: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        p = subprocess.run(
            [sys.executable, "-c", CHILD, str(data), out, str(steps), checkpointing],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    data = Path(str(files(SHIPPED_EXAMPLES))) / BUILD_EXAMPLE_DATA
    got = {mode: run(data, args.steps, mode) for mode in ("on", "off")}
    print("| gradient checkpointing | s/step | peak RSS MiB | loss at last step |")
    print("|---|---|---|---|")
    for mode, r in got.items():
        print(f"| {mode} | {r['seconds'] / r['steps']:.2f} | {r['peak_rss_mib']:.0f} | {r['loss']:.4f} |")
    ratio = got["on"]["seconds"] / got["off"]["seconds"]
    print(f"\non/off step time: {ratio:.2f}x")


if __name__ == "__main__":
    main()

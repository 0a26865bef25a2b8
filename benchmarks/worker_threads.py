"""Two test workers on one machine: each taking every core (what `pytest -n auto` did) against each pinned to its
own share of the cores, one thread a core (what tests/conftest.py now does), side by side.

    python benchmarks/worker_threads.py [--reps 3]

Each setting runs two processes at once, each doing the same work: torch fp32 matmuls at the default fine-tune's
shapes, then llama.cpp's prompt processing and decoding on the shipped default GGUF. Prints each setting's wall time
(the slower process of the two, best of --reps) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

WORK = """
import os, sys, time
cores = sys.argv[1]
if cores != "all":
    os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
threads = len(os.sched_getaffinity(0)) if cores != "all" else os.cpu_count()
import torch
torch.set_num_threads(threads)
x, w = torch.randn(512, 576), torch.randn(576, 1536)
for _ in range(400):
    x @ w
import llama_cpp
from edgeq.basemodel import default_gguf_path
llm = llama_cpp.Llama(str(default_gguf_path()), n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
llm.eval(list(range(100, 356)))
for _ in range(48):
    llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
"""


def wall(pins: list[str]) -> float:
    """Seconds until every process of `pins` (one process each, started together) has finished."""
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WORK, p]) for p in pins]
    if any(p.wait() for p in procs):
        raise SystemExit("a worker failed")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    half = len(cores) // 2 or 1
    pinned = [",".join(map(str, cores[:half])), ",".join(map(str, cores[half:] or cores[:half]))]
    every = min(wall(["all", "all"]) for _ in range(args.reps))
    own = min(wall(pinned) for _ in range(args.reps))
    print(f"{len(cores)} cores; two processes at once, best of {args.reps}")
    print(f"each on every core ({len(cores)} threads each): {every:.1f} s")
    print(f"each pinned to its own cores ({pinned[0]} | {pinned[1]}, a thread a core): {own:.1f} s")
    print(f"ratio: {every / own:.2f}× faster pinned")


if __name__ == "__main__":
    main()

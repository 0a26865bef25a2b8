"""`edgeq bench` decode rate vs a bare llama-cpp-python eval loop, and both vs the bandwidth ceiling.

    python benchmarks/bench_overhead.py MODEL.gguf [--threads 2] [--reps 5] [--gen-tokens 128]

One run, same file and threads: the bare loop (load, eval the prompt, greedy eval loop) runs in
fresh processes alternating with `edgeq bench` repetitions. The ceiling is measured memory read
bandwidth (numpy sums, one process per thread) divided by the bytes read per generated token
(all tensor data of the GGUF: every weight, the tied output matrix included, is read once per
token; the KV cache of a short context is small and left out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from multiprocessing import Pool

BARE = r"""
import sys, time, numpy as np, llama_cpp
from edgeq.runtime import configure_llama, llama_config
configure_llama(llama_config())  # the configuration edgeq runs with on this CPU (probe.py), for a like-for-like loop
path, threads, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(path, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
ids = llm.tokenize(b"The companion computer shares its memory with the vision pipeline and telemetry.", add_bos=False)
def nxt():
    return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).argmax())
llm.eval(ids[:4]); nxt(); llm.reset()
llm.eval(ids); tok = nxt()
t = time.perf_counter()
for _ in range(n_gen - 1):
    llm.eval([tok]); tok = nxt()
print((n_gen - 1) / (time.perf_counter() - t))
"""


def _sum_gbs(_):
    import numpy as np

    a = np.ones(1 << 26, dtype=np.float64)  # 512 MiB
    a.sum()
    t = time.perf_counter()
    for _ in range(4):
        a.sum()
    return 4 * a.nbytes / (time.perf_counter() - t) / 1e9


def bandwidth_gbs(procs: int) -> float:
    with Pool(procs) as p:
        return sum(p.map(_sum_gbs, range(procs)))


def main() -> None:
    from edgeq.ggufcheck import check_gguf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--gen-tokens", type=int, default=128)
    args = ap.parse_args()
    bare, ours = [], []
    for _ in range(args.reps):
        p = subprocess.run(
            [sys.executable, "-c", BARE, args.gguf, str(args.threads), str(args.gen_tokens)],
            capture_output=True,
            text=True,
            check=True,
        )
        bare.append(float(p.stdout.strip().splitlines()[-1]))
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgeq",
                "bench",
                args.gguf,
                "--reps",
                "1",
                "--threads",
                str(args.threads),
                "--prompt-tokens",
                "16",
                "--gen-tokens",
                str(args.gen_tokens),
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        ours.append(json.loads(p.stdout)["results"]["decode_tok_s"]["median"])
    header = check_gguf(args.gguf)
    gbs = bandwidth_gbs(args.threads)
    ceiling = gbs * 1e9 / header["data_bytes"]
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"{args.gguf}: {header['data_bytes'] / 2**20:.1f} MiB of tensor data read per token, {args.threads} threads")
    print(f"bare llama-cpp-python eval loop: {b:.1f} tok/s (median of {args.reps}: {[round(x, 1) for x in bare]})")
    print(f"edgeq bench:                     {o:.1f} tok/s (median of {args.reps}: {[round(x, 1) for x in ours]})")
    print(f"ratio edgeq / bare: {o / b:.3f} (target >= 0.97)")
    print(
        f"memory read bandwidth ({args.threads} processes): {gbs:.1f} GB/s -> ceiling {ceiling:.1f} tok/s; "
        f"edgeq reaches {o / ceiling:.2f} of it"
    )


if __name__ == "__main__":
    main()

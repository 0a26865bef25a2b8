"""llama.cpp with its default configuration vs extra buffer types off (edgeq's AMX workaround), side by side.

    python benchmarks/llama_config_speed.py [--model DIR] [--types F16,Q8_0,Q4_K_M,Q4_0] [--reps 3]

Each type of the model (default: the embedded default model) is benched in fresh children as
`edgeq bench` runs it (greedy eval loop, prompt 128, 64 generated tokens, ctx 1024, 2 threads),
once per configuration, forced with EDGEQ_LLAMA_EXTRA_BUFTS. A configuration that crashes on this
CPU is reported as such, with its signal. Prints a Markdown table: decode tok/s and peak RSS in
both configurations and the ratio off / on: the speed the workaround costs where both run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

from edgeq.basemodel import resolve_model
from edgeq.bench import measure_in_child
from edgeq.child import CrashError
from edgeq.export.gguf import quantize_gguf, write_float_gguf
from edgeq.machine import platform_info
from edgeq.spec import ENV_LLAMA_EXTRA_BUFTS


def run(path: Path, extra: bool, reps: int) -> dict:
    os.environ[ENV_LLAMA_EXTRA_BUFTS] = "1" if extra else "0"
    try:
        runs = [measure_in_child("gguf", path, 128, 64, 2, 1024) for _ in range(reps)]
    except CrashError as e:
        return {"crash": e.signal_name}
    return {
        "decode": statistics.median(r["decode_tok_s"] for r in runs),
        "rss": statistics.median(r["peak_rss_mib"] for r in runs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--types", default="F16,Q8_0,Q4_K_M,Q4_0")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    model = resolve_model(args.model)
    print(f"CPU: {platform_info()['cpu']} ({platform.machine()}), model {model.name}, {args.reps} reps\n")
    head = ["type", "default: decode tok/s", "default: peak RSS MiB", "extras off: decode tok/s"]
    print("| " + " | ".join([*head, "extras off: peak RSS MiB", "decode off / on"]) + " |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        flt = Path(tmp) / "model.F16.gguf"
        write_float_gguf(model, flt, "F16")
        for q in args.types.split(","):
            path = flt if q == "F16" else Path(tmp) / f"{q}.gguf"
            if q != "F16":
                quantize_gguf(flt, path, q)
            on, off = run(path, True, args.reps), run(path, False, args.reps)

            def cells(r):
                return [f"crashed ({r['crash']})", "-"] if "crash" in r else [f"{r['decode']:.1f}", f"{r['rss']:.1f}"]

            ratio = f"{off['decode'] / on['decode']:.2f}" if "crash" not in on and "crash" not in off else "-"
            print("| " + " | ".join([q, *cells(on), *cells(off), ratio]) + " |", flush=True)


if __name__ == "__main__":
    main()

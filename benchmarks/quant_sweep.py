"""Every export type of one model, side by side: size, bits/weight, KLD, top-1 and task score.

    python benchmarks/quant_sweep.py --model runs/demo/merged [--data examples/drone/test.jsonl]
                                     [--types Q8_0,Q4_K_M,...] [--limit N] [--out sweep.json]

Each artifact is exported with `edgeq export` (its gates included) and scored with `edgeq eval`
against the same float model, so the rows compare like with like. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GGUF = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0", "IQ4_XS", "Q3_K_M", "Q2_K"]
ONNX = ["fp32", "int8", "int4-block32", "int4-block128"]


def edgeq(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeq", *map(str, args)], capture_output=True, text=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="examples/drone/test.jsonl")
    ap.add_argument("--types", default=",".join(GGUF + ONNX))
    ap.add_argument("--limit", type=int, default=None, help="score only the first N task examples")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for q in args.types.split(","):
            fmt = "onnx" if q in ONNX else "gguf"
            art = Path(tmp) / (q if fmt == "onnx" else f"{q}.gguf")
            p = edgeq("export", "--model", args.model, "--format", fmt, "--quant", q, "--out", art)
            if p.returncode != 0:
                rows.append({"quant": q, "format": fmt, "error": p.stderr.strip().splitlines()[-1]})
                print(f"{q}: export failed: {rows[-1]['error']}", file=sys.stderr)
                continue
            size = art.stat().st_size if art.is_file() else sum(f.stat().st_size for f in art.rglob("*") if f.is_file())
            limit = ["--limit", args.limit] if args.limit else []
            p = edgeq("eval", art, "--reference", args.model, "--data", args.data, "--json", *limit)
            if p.returncode != 0:
                rows.append({"quant": q, "format": fmt, "bytes": size, "error": p.stderr.strip().splitlines()[-1]})
                continue
            r = json.loads(p.stdout)
            rows.append(
                {
                    "quant": q,
                    "format": fmt,
                    "bytes": size,
                    **{f"text_{k}": v for k, v in r["text"].items()},
                    "task_kld": r["task_text"]["mean_kld"],
                    "task_top1": r["task_text"]["top1_agreement"],
                    "task_exact_pct": r["task"]["score"],
                    "unparseable_pct": r["task"]["unparseable_pct"],
                }
            )
            print(f"{q}: {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    print("| format | type | size MiB | KLD text | top-1 text | KLD task | top-1 task | task exact % | unparseable % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['format']} | {r['quant']} | failed: {r['error']} |||||||")
            continue
        print(
            f"| {r['format']} | {r['quant']} | {r['bytes'] / 2**20:.1f} | {r['text_mean_kld']:.4f} | "
            f"{100 * r['text_top1_agreement']:.1f} | {r['task_kld']:.4f} | {100 * r['task_top1']:.1f} | "
            f"{r['task_exact_pct']:.1f} | {r['unparseable_pct']:.1f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

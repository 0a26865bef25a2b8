"""ONNX 4-bit against GGUF Q4_K_M on one model, in one run: the builder's weights and edgeq's, side by side.

    python benchmarks/onnx_int4.py --model builds/drone/.edgeq/merge/merged [--calib examples/drone/train.jsonl]
                                   [--heldout examples/drone/test.jsonl] [--limit 40] [--out benchmarks/onnx_int4]

Artifacts, all from the same float model:
  builder RTN        onnxruntime-genai's builder, int4 block 32 as it writes it (what `edgeq export` shipped before)
  edgeq, no imatrix  onnxquant's block fit with every input column weighted alike, head at 8 bits
  edgeq              the same weighted by the importance matrix of --calib (what `edgeq build` exports)
  edgeq 4/8 b32      + 8-bit weights chosen by the solver up to 1.2× the Q4_K_M file's size, all in blocks of 32
  edgeq auto         `--quant auto`: bits (4, 8) and block size (16–128) chosen per weight by the solver, at 1.2×
                     and at 1.0× the Q4_K_M file's size
  GGUF Q4_K_M        llama.cpp's quantizer with the same importance matrix (the bar: ≤ 1.2× its size, ≤ 1.5× its KLD)
Each is compared with the HF float model on held-out task conversations and on general text (mean KLD, top-1),
greedy-answers the first --limit held-out prompts through its own runtime (task score), and is timed once
(edgeq bench's measurement: 128 prompt + 64 generated tokens, 2 threads; decode tok/s and peak RSS). Prints a
Markdown table with size and KLD as ratios to Q4_K_M; writes OUT.json and a plot, OUT.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

MIB = 2**20


def main() -> None:
    from common import references

    from edgeq.basemodel import resolve_model
    from edgeq.bench import measure_in_child
    from edgeq.child import run_process
    from edgeq.evaluate import (
        answer_budget,
        artifact_task,
        compare_logits,
    )
    from edgeq.export import onnxquant
    from edgeq.export.gguf import quantize_gguf, write_f16_gguf
    from edgeq.export.imatrix import compute_imatrix
    from edgeq.export.onnx import builder_args
    from edgeq.machine import platform_info
    from edgeq.runtime import artifact_bytes
    from edgeq.spec import TOKENIZER_FILES
    from edgeq.task import load_task

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF model dir; default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--calib", default="examples/drone/train.jsonl")
    ap.add_argument("--heldout", default="examples/drone/test.jsonl")
    ap.add_argument("--limit", type=int, default=40, help="held-out prompts answered per artifact")
    ap.add_argument("--size-ratio", type=float, default=1.2, help="the mixed recipe's size, × the Q4_K_M file")
    ap.add_argument("--out", default="benchmarks/onnx_int4")
    ap.add_argument("--from-json", default=None, help="print the table of an earlier run's OUT.json")
    args = ap.parse_args()
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        summarize(result)
        plot(result, Path(args.out + ".png"))
        return

    model_dir = resolve_model(args.model, False)
    tok, ids, refs = references(model_dir, load_task(args.heldout))
    short = load_task(args.heldout, args.limit)
    budget = answer_budget(tok, short)
    imatrix, _ = compute_imatrix(model_dir, args.calib)

    def measure(name: str, path: Path, extra: dict | None = None) -> dict:
        r = {"name": name, "bytes": artifact_bytes(path), **(extra or {})}
        for k in ("task", "text"):
            c = compare_logits(path, refs[k], ids[k])
            r[f"{k}_kld"], r[f"{k}_top1"] = c.mean_kld, c.top1_agreement
        r["task_score"] = artifact_task(path, tok, short, budget)[0].score
        fmt = "gguf" if path.suffix == ".gguf" else "onnx"
        speed = measure_in_child(fmt, path, 128, 64, 2, 256)
        r["decode_tok_s"], r["peak_rss_mib"] = speed["decode_tok_s"], speed["peak_rss_mib"]
        print(
            f"{name:18s} {r['bytes'] / MIB:7.1f} MiB  task KLD {r['task_kld']:.4f}  text KLD {r['text_kld']:.4f}  "
            f"task {r['task_score']:.1f}  {r['decode_tok_s']:.1f} tok/s  {r['peak_rss_mib']:.0f} MiB RSS",
            flush=True,
        )
        return r

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeq-onnx-int4-") as scratch:
        work = Path(scratch)
        flt = work / "model.F16.gguf"
        write_f16_gguf(model_dir, flt)
        quantize_gguf(flt, work / "q4km.gguf", "Q4_K_M", imatrix)
        q4km = measure("GGUF Q4_K_M", work / "q4km.gguf")
        built = work / "builder"
        run_process(builder_args(model_dir, built, work / "cache", "int4-block32", "cpu"), "the builder", "")
        for name in TOKENIZER_FILES:
            if (model_dir / name).is_file() and not (built / name).exists():
                shutil.copyfile(model_dir / name, built / name)
        rows.append(measure("builder RTN", built))
        fits = onnxquant.fit_all(built, model_dir, imatrix, onnxquant.auto_palette)
        flat = onnxquant.fit_all(built, model_dir, None, onnxquant.default_palette(32))
        fixed = work / "fixed"

        def build(name: str, f: dict, layout: dict | None = None, size_ratio: float | None = None) -> None:
            """The variant measured: `layout`, or the one solve_layout picks from `f` at size_ratio × Q4_K_M."""
            shutil.rmtree(fixed, ignore_errors=True)
            shutil.copytree(built, fixed)
            if layout is None:  # written once at the smallest layout to measure the bytes that are not weights
                account = onnxquant.requantize(fixed, f, {s: onnxquant.smallest(f, s) for s, _, _ in f})
                other = artifact_bytes(fixed) - sum(a["bytes"] for a in account.values())
                layout = onnxquant.solve_layout(f, size_ratio * q4km["bytes"] - other)
            onnxquant.requantize(fixed, f, layout)
            counts = Counter(f"{b}/{blk}" for b, blk in layout.values())
            rows.append(measure(name, fixed, {"layout": dict(sorted(counts.items()))}))

        build("edgeq, no imatrix", flat, {s: (b, blk) for s, b, blk in flat})
        default = onnxquant.default_palette(32)
        build("edgeq", fits, {s: (b, blk) for s, b, blk in fits if (b, blk) == default(s, 0)[0]})
        b32 = {k: f for k, f in fits.items() if f.block == 32}
        build(f"edgeq 4/8 b32 ≤ {args.size_ratio}×", b32, size_ratio=args.size_ratio)
        build(f"edgeq auto ≤ {args.size_ratio}×", fits, size_ratio=args.size_ratio)
        build("edgeq auto ≤ 1.0×", fits, size_ratio=1.0)
    rows.append(q4km)
    result = {
        "model": str(model_dir),
        "cpu": platform_info()["cpu"],
        "calib": args.calib,
        "heldout": args.heldout,
        "limit": args.limit,
        "rows": rows,
    }
    Path(args.out + ".json").write_text(json.dumps(result, indent=1))
    summarize(result)
    plot(result, Path(args.out + ".png"))


def summarize(result: dict) -> None:
    rows = result["rows"]
    ref = next(r for r in rows if r["name"] == "GGUF Q4_K_M")
    print(f"\n{result['model']} on {result['cpu']}; task score on the first {result['limit']} held-out prompts")
    print(
        "| artifact | size MiB | × Q4_K_M | text KLD | × Q4_K_M | task KLD | × Q4_K_M | top-1 task | task score "
        "| decode tok/s | peak RSS MiB | bits/block: weights |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        layout = ", ".join(f"{k}: {n}" for k, n in r.get("layout", {}).items()) or "–"
        print(
            f"| {r['name']} | {r['bytes'] / MIB:.1f} | {r['bytes'] / ref['bytes']:.2f} | {r['text_kld']:.4f} | "
            f"{r['text_kld'] / ref['text_kld']:.2f} | {r['task_kld']:.4f} | {r['task_kld'] / ref['task_kld']:.2f} | "
            f"{r['task_top1']:.3f} | {r['task_score']:.1f} | {r.get('decode_tok_s', float('nan')):.1f} | "
            f"{r.get('peak_rss_mib', float('nan')):.0f} | {layout} |"
        )


def plot(result: dict, path: Path) -> None:
    """General-text KLD against size, log scale, with the goal's box: ≤ 1.2× Q4_K_M's size, ≤ 1.5× its KLD."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    ref = next(r for r in rows if r["name"] == "GGUF Q4_K_M")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    size, kld = ref["bytes"] / MIB, ref["text_kld"]
    ax.fill_between([0, 1.2 * size], 0, 1.5 * kld, color="tab:green", alpha=0.12, label="goal: ≤ 1.2× size, ≤ 1.5× KLD")
    for r in rows:
        gguf = r["name"].startswith("GGUF")
        ax.scatter(
            r["bytes"] / MIB, r["text_kld"], marker="s" if gguf else "o", color="tab:red" if gguf else "tab:blue"
        )
        ax.annotate(r["name"], (r["bytes"] / MIB, r["text_kld"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set(xlabel="artifact size (MiB)", ylabel="mean KLD vs float, general text", yscale="log", xlim=(80, 135))
    ax.set_title(f"ONNX 4-bit on {result['cpu']}", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

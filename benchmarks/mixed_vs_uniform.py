"""Mixed precision against llama.cpp's uniform types at equal size, in one run.

    python benchmarks/mixed_vs_uniform.py [--model DIR] [--calib examples/drone/train.jsonl]
                                          [--heldout examples/drone/test.jsonl] [--out benchmarks/mixed_vs_uniform]

One F16 GGUF of the model; an importance matrix on the calibration data; the per-tensor sensitivity over every
ggml type llama.cpp's uniform types write, priced per tensor class and layer band by a measured KLD. Then, for
each uniform type from Q3_K_M to Q6_K: the uniform file (llama.cpp's own mixture, with the same importance matrix) and
edgeq's mixed recipe solved for that file's exact size. Both are compared with the HF float model on held-out
task conversations (never seen by the imatrix) and on general text: mean KLD, top-1 agreement. The mixed
file's size is predicted before it is built (the quantizer's dry run) and its peak RSS at --ctx is predicted
(plan's calibration) and measured (bench's child, one run). Task exact match: greedy answers to every held-out
prompt through llama.cpp, scored with the task's metric.

Prints a table with the KLD ratio mixed/uniform and how well each sensitivity ranks the files' measured KLD
(Spearman ρ over all of them): the raw importance-weighted error sum and the same errors priced per class and band
(the solver's). Writes OUT.json and OUT.png. `--from-json OUT.json` prints the table again.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

UNIFORM = ["Q3_K_M", "IQ4_XS", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K"]
MIB = 2**20


def main() -> None:
    from common import references

    from edgeq import mixed
    from edgeq.basemodel import resolve_model
    from edgeq.bench import measure_in_child
    from edgeq.calibration import machine_calibration
    from edgeq.evaluate import (
        answer_budget,
        artifact_task,
        compare_logits,
    )
    from edgeq.export.gguf import quantize_gguf, write_f16_gguf
    from edgeq.export.imatrix import compute_imatrix
    from edgeq.footprint import dry_run_types
    from edgeq.machine import platform_info
    from edgeq.pricing import kld_probe, plan_mixed
    from edgeq.spec import FORMAT_GGUF, GGUF_FLOAT_TYPES, quant_names
    from edgeq.task import load_task

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF model dir; default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--calib", default="examples/drone/train.jsonl")
    ap.add_argument("--heldout", default="examples/drone/test.jsonl")
    ap.add_argument("--types", default=",".join(UNIFORM))
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--out", default="benchmarks/mixed_vs_uniform")
    ap.add_argument("--from-json", default=None, help="print the table of an earlier run's OUT.json")
    args = ap.parse_args()
    if args.from_json:
        summarize(json.loads(Path(args.from_json).read_text()))
        return

    model_dir = resolve_model(args.model, False)
    task = load_task(args.heldout)
    tok, ids, refs = references(model_dir, task)
    budget = answer_budget(tok, task)
    quants = [q for q in quant_names(FORMAT_GGUF, calibrated_only=True) if q not in GGUF_FLOAT_TYPES]
    cal_path, cal = machine_calibration()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeq-mixed-bench-") as scratch:
        work = Path(scratch)
        flt = work / "model.F16.gguf"
        write_f16_gguf(model_dir, flt)
        imatrix, _ = compute_imatrix(model_dir, args.calib)
        tensors = mixed.quantizable(flt)
        written = {q: dry_run_types(flt, q) for q in quants}  # one dry run per type
        palette = sorted({written[q][t.name][0] for q in quants for t in tensors})
        errors = mixed.sensitivity(flt, palette, imatrix, work, quants[0])
        gains = mixed.group_gains(errors, kld_probe(model_dir, args.calib, flt, quants[0], imatrix, work))
        priced = mixed.priced(errors, gains)

        def measure(path: Path) -> dict:
            r = {"bytes": path.stat().st_size}
            for k in ("task", "text"):
                c = compare_logits(path, refs[k], ids[k])
                r[f"{k}_kld"], r[f"{k}_top1"] = c.mean_kld, c.top1_agreement
            r["task_score"] = artifact_task(path, tok, task, budget)[0].score
            return r

        def errors_of(path: Path) -> dict:
            types = mixed.written_types(path)
            return {"error": mixed.recipe_error(types, priced), "raw_error": mixed.recipe_error(types, errors)}

        for u in args.types.split(","):
            upath = work / f"{u}.gguf"
            quantize_gguf(flt, upath, u, imatrix)
            uni = measure(upath) | errors_of(upath)
            size_mib = uni["bytes"] / MIB
            candidate, predicted, info = plan_mixed(
                model_dir,
                flt,
                quants,
                args.ctx,
                128,
                cal,
                size_mib,
                float("inf"),
                imatrix,
                work,
                measured=(errors, gains),
            )
            mpath = work / f"mixed-{u}.gguf"
            quantize_gguf(flt, mpath, candidate.quant, imatrix, dict(candidate.recipe))
            mix = measure(mpath) | errors_of(mpath) | {"types": info["types"]}
            run = measure_in_child(FORMAT_GGUF, mpath, 128, 8, 2, args.ctx)
            mix |= {
                "predicted_mib": predicted.storage_mib,
                "predicted_rss_mib": predicted.memory_mib,
                "peak_rss_mib": run["peak_rss_mib"],
            }
            rows.append({"uniform_type": u, "uniform": uni, "mixed": mix})
            upath.unlink()
            mpath.unlink()
            print(
                f"{u:7s} {size_mib:7.2f} MiB  task KLD {uni['task_kld']:.4f} → {mix['task_kld']:.4f} "
                f"({mix['task_kld'] / uni['task_kld']:.2f}x)  text KLD {uni['text_kld']:.4f} → {mix['text_kld']:.4f} "
                f"({mix['text_kld'] / uni['text_kld']:.2f}x)  size {mix['bytes'] / MIB:.2f} "
                f"(pred {predicted.storage_mib:.2f})  RSS {run['peak_rss_mib']:.0f} (pred {predicted.memory_mib:.0f})",
                flush=True,
            )
    result = {
        "model": str(model_dir),
        "cpu": platform_info()["cpu"],
        "calibration": cal_path.stem,
        "calib": args.calib,
        "heldout": args.heldout,
        "ctx": args.ctx,
        "metric": task.metric,
        "gains": gains,
        "rows": rows,
    }
    Path(args.out + ".json").write_text(json.dumps(result, indent=1))
    plot(rows, Path(args.out + ".png"))
    summarize(result)


def spearman(xs: list[float], ys: list[float]) -> float:
    import numpy as np

    rx, ry = np.argsort(np.argsort(xs)), np.argsort(np.argsort(ys))
    return float(np.corrcoef(rx, ry)[0, 1])


def summarize(result: dict) -> None:
    rows = result["rows"]
    print(f"\n{result['model']} on {result['cpu']}; ctx {result['ctx']}; calibration {result['calibration']}")
    print(
        "| uniform | size MiB | task KLD uniform → mixed | ratio | text KLD uniform → mixed | ratio | "
        "top-1 task (u / m) | task score (u / m) | mixed size: predicted / file | peak RSS: predicted / measured |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        u, m = r["uniform"], r["mixed"]
        rss_error = m["predicted_rss_mib"] / m["peak_rss_mib"] - 1
        print(
            f"| {r['uniform_type']} | {u['bytes'] / MIB:.2f} | {u['task_kld']:.4f} → {m['task_kld']:.4f} | "
            f"{m['task_kld'] / u['task_kld']:.2f}× | {u['text_kld']:.4f} → {m['text_kld']:.4f} | "
            f"{m['text_kld'] / u['text_kld']:.2f}× | {u['task_top1']:.3f} / {m['task_top1']:.3f} | "
            f"{score(u)} / {score(m)} | "
            f"{m['predicted_mib']:.2f} / {m['bytes'] / MIB:.2f} | "
            f"{m['predicted_rss_mib']:.0f} / {m['peak_rss_mib']:.0f} ({rss_error:+.1%}) |"
        )
    files = [r[k] for r in rows for k in ("uniform", "mixed")]
    priced = all("raw_error" in f for f in files)  # earlier runs recorded one sum: their solver's, raw at 7eae720
    for source, name in (("raw_error", "raw error sum"), ("error", "priced error sum" if priced else "error sum")):
        if all(source in f for f in files):
            for key in ("task_kld", "text_kld"):
                rho = spearman([f[source] for f in files], [f[key] for f in files])
                print(f"Spearman ρ ({name} vs measured {key}, {len(files)} files): {rho:.3f}")


def score(r: dict) -> str:
    return f"{r['task_score']:.1f}" if "task_score" in r else "–"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in zip(axes, ("task_kld", "text_kld"), ("held-out task text", "general text"), strict=True):
        for kind, marker in (("uniform", "o"), ("mixed", "s")):
            xs = [r[kind]["bytes"] / MIB for r in rows]
            ax.plot(xs, [r[kind][key] for r in rows], marker=marker, label=kind)
        for r in rows:
            ax.annotate(r["uniform_type"], (r["uniform"]["bytes"] / MIB, r["uniform"][key]), fontsize=7)
        ax.set(xlabel="file size (MiB)", ylabel="mean KLD vs float", title=title, yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

"""Measure the runtime terms of `edgeq plan`'s memory model and write them as data.

    python benchmarks/calibrate_plan.py --model runs/demo/merged [--write] [--out calib.json]

Exports the model (and a narrow random model, so the runtime's base separates from per-weight
terms) to every GGUF and ONNX type, measures the peak RSS of `edgeq bench`'s fresh child process
over a grid of context and prompt sizes, and fits:
  GGUF  RSS = base + Σ_type bytes × resident_factor[type] + KV(f16) + hidden × (a × prompt + b × batch)
        resident_factor is 1 for types llama.cpp serves from the mmap; above 1 where its CPU backend
        repacks a copy (the mapped pages stay resident too).
  ONNX  RSS = max(base + f[prec] × matmul bytes + other + KV(fp32) + prompt × vocab × 4,
                  base + load[prec] × matmul bytes)     (the second: the transient while loading)
Prints measured vs predicted for every point; --write replaces edgeq/assets/plan_calibration.json.
Run it on the target CPU to calibrate for it (repacking differs between x86 and ARM).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeq.basemodel import resolve_model
from edgeq.bench import measure_in_child
from edgeq.doctor import package_version, platform_info
from edgeq.export.gguf import quantize_gguf, write_float_gguf
from edgeq.export.onnx import OnnxExport, export_onnx
from edgeq.plan import MIB, Dims, gguf_tensor_types, kv_cache_bytes, onnx_bytes
from edgeq.runtime import ASSETS
from edgeq.spec import LLAMA_CPP_MAX_BATCH, PLAN_CALIBRATION

GGUF = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0", "IQ4_XS", "Q3_K_M", "Q2_K"]
ONNX = ["fp32", "int8", "int4-block32", "int4-block128"]
GRID = [(256, 128), (1024, 128), (4096, 128), (1024, 16), (1024, 512)]  # (ctx, prompt)
TINY_GRID = [(256, 128), (512, 128)]


def narrow_model(out: Path, tokenizer_dir: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import make_tiny_model

    return make_tiny_model(out, tokenizer_dir)


def artifacts(model: Path, work: Path, tag: str, gguf: list[str], onnx: list[str]) -> list[dict]:
    d = Dims.from_config(model)
    flt = work / f"{tag}.F16.gguf"
    write_float_gguf(model, flt, "F16")
    arts = []
    for q in gguf:
        path = flt if q == "F16" else work / f"{tag}.{q}.gguf"
        if q != "F16":
            quantize_gguf(flt, path, q)
        arts.append({"fmt": "gguf", "quant": q, "path": path, "dims": d, "types": gguf_tensor_types(flt, q)})
    for q in onnx:
        path = work / f"{tag}.{q}"
        export_onnx(OnnxExport(model=str(model), out=str(path), quant=q))
        arts.append({"fmt": "onnx", "quant": q, "path": path, "dims": d, "sizes": onnx_bytes(d, q)})
    return arts


def measure_all(arts: list[dict], grid: list[tuple[int, int]]) -> list[dict]:
    points = []
    for a in arts:
        for ctx, prompt in grid:
            if ctx > a["dims"].max_positions:
                continue
            r = measure_in_child(a["fmt"], a["path"], prompt, 32, 2, ctx)
            points.append({**a, "ctx": ctx, "prompt": prompt, "rss": r["peak_rss_mib"] * MIB})
            print(f"{a['fmt']} {a['quant']:14} ctx {ctx:5} prompt {prompt:4}: {r['peak_rss_mib']:.1f} MiB", flush=True)
    return points


def fit_gguf(points: list[dict]) -> dict:
    """Least squares with a ridge on the per-type extras: a type is resident twice only if the data say so."""
    types = sorted({t for p in points for t in p["types"]})
    X, y = [], []
    for p in points:
        d = p["dims"]
        X.append(
            [1.0, d.hidden * p["prompt"], d.hidden * min(LLAMA_CPP_MAX_BATCH, p["ctx"])]
            + [p["types"].get(t, 0) for t in types]
        )
        y.append(p["rss"] - sum(p["types"].values()) - kv_cache_bytes(d, p["ctx"], 2))
    for i in range(len(types)):  # pull each extra towards 0 with the weight of 4 MiB of evidence
        X.append([0.0, 0.0, 0.0] + [4 * MIB * (j == i) for j in range(len(types))])
        y.append(0.0)
    coef = np.linalg.lstsq(np.array(X), np.array(y), rcond=None)[0]
    extra = dict(zip(types, coef[3:], strict=True))
    return {
        "base_mib": round(float(coef[0]) / MIB, 2),
        "compute_bytes_per_prompt_token_per_hidden": round(float(coef[1]), 2),
        "compute_bytes_per_batch_token_per_hidden": round(float(coef[2]), 2),
        "kv_bytes_per_element": 2,
        # only types measurably resident twice get a factor; the rest are served from the mmap (1.0)
        "resident_factor": {t: round(1 + float(e), 3) for t, e in extra.items() if e > 0.1},
    }


def fit_onnx(points: list[dict]) -> dict:
    """Steady state by least squares; points far above it (fp32 loading) set that precision's load factor."""
    quants = sorted({p["quant"] for p in points})

    def rest(p):
        return p["rss"] - p["sizes"]["other"] - kv_cache_bytes(p["dims"], p["ctx"], 4)

    def row(p):
        return [1.0, p["prompt"] * p["dims"].vocab] + [p["sizes"]["matmul"] * (q == p["quant"]) for q in quants]

    # loading-bound: a larger context (same artifact and prompt) did not raise the peak — the KV cache
    # grew after the peak was set, while initializers were still being loaded
    loading = [
        p
        for p in points
        for q in points
        if q["path"] == p["path"]
        and q["prompt"] == p["prompt"]
        and q["ctx"] > p["ctx"]
        and abs(q["rss"] - p["rss"]) < 0.005 * p["rss"]
        and kv_cache_bytes(p["dims"], q["ctx"] - p["ctx"], 4) > 0.02 * p["rss"]
    ]
    steady = [p for p in points if p not in loading]
    coef = np.linalg.lstsq(np.array([row(p) for p in steady]), np.array([rest(p) for p in steady]), rcond=None)[0]
    base, factor = float(coef[0]), dict(zip(quants, map(float, coef[2:]), strict=True))
    load = {}
    for p in loading:
        load[p["quant"]] = max(load.get(p["quant"], 0.0), (p["rss"] - base) / p["sizes"]["matmul"])
    return {
        "base_mib": round(base / MIB, 2),
        "prompt_bytes_per_token_per_vocab": round(float(coef[1]), 3),
        "kv_bytes_per_element": 4,
        "resident_factor": {q: round(f, 3) for q, f in factor.items()},
        "load_factor": {q: round(f, 3) for q, f in load.items()},
    }


def save_points(points: list[dict], path: Path) -> None:
    keep = [{**p, "path": str(p["path"]), "dims": dataclasses.asdict(p["dims"])} for p in points]
    path.write_text(json.dumps(keep))


def load_points(path: Path) -> list[dict]:
    return [{**p, "dims": Dims(**p["dims"])} for p in json.loads(path.read_text())]


def main() -> None:
    from edgeq.plan import predict_gguf_rss, predict_onnx_rss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF model dir (default: the embedded default model)")
    ap.add_argument("--write", action="store_true", help=f"replace edgeq/assets/{PLAN_CALIBRATION}")
    ap.add_argument("--out", default=None, help="also write the calibration JSON here")
    ap.add_argument("--points", default=None, help="measurements: reuse this file if it exists, else save to it")
    args = ap.parse_args()
    model = resolve_model(args.model)
    ap_points = Path(args.points) if args.points else None
    points = load_points(ap_points) if ap_points and ap_points.is_file() else None
    with tempfile.TemporaryDirectory(prefix="edgeq-calib-") as tmp:
        work = Path(tmp)
        if points is None:
            narrow = narrow_model(work / "narrow", resolve_model(None))
            points = measure_all(artifacts(model, work, "model", GGUF, ONNX), GRID)
            points += measure_all(artifacts(narrow, work, "narrow", ["F16", "Q8_0", "Q4_0"], ONNX), TINY_GRID)
            if ap_points:
                save_points(points, ap_points)
    plat = platform_info()
    cal = {
        "measured_on": {
            "date": datetime.date.today().isoformat(),
            "cpu": plat["cpu"],
            "cores": plat["cores_logical"],
            "machine": plat["machine"],
            "cpu_features": plat["cpu_features"],
            "llama_cpp_python": package_version("llama_cpp"),
            "onnxruntime_genai": package_version("onnxruntime_genai"),
            "model": str(model),
        },
        "gguf": fit_gguf([p for p in points if p["fmt"] == "gguf"]),
        "onnx": fit_onnx([p for p in points if p["fmt"] == "onnx"]),
    }
    print("\n| format | type | model | ctx | prompt | measured MiB | predicted MiB | error |")
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for p in points:
        if p["fmt"] == "gguf":
            pred = predict_gguf_rss(p["dims"], p["types"], p["ctx"], p["prompt"], cal)["total"]
        else:
            pred = predict_onnx_rss(p["dims"], p["quant"], p["ctx"], p["prompt"], cal)["total"]
        err = pred / p["rss"] - 1
        worst = max(worst, abs(err))
        name = "narrow" if p["dims"].hidden < 128 else "model"
        print(
            f"| {p['fmt']} | {p['quant']} | {name} | {p['ctx']} | {p['prompt']} | {p['rss'] / MIB:.1f} | "
            f"{pred / MIB:.1f} | {100 * err:+.1f} % |"
        )
    print(f"\nworst error {100 * worst:.1f} % over {len(points)} points")
    text = json.dumps(cal, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    if args.write:
        from edgeq.io import write_text

        write_text(ASSETS / PLAN_CALIBRATION, text)
    print(text)


if __name__ == "__main__":
    main()

"""`edgeq calibrate`: measure plan's memory model on the machine that will run the artifact.

    edgeq calibrate --out board.json [--threads N] [--onnx/--no-onnx] [--model DIR]

plan predicts peak RSS as runtime base + resident weights + KV cache + compute buffers; the
base and the weights' residency depend on the CPU and the runtime's configuration (llama.cpp repacks
some types for x86 and ARM CPUs and keeps them resident twice; with extra buffer types off it does
not), so they are measured where the artifact will run. GGUF needs only the runtime install: random-weight
GGUFs at the default model's shape and a narrow shape are written here with gguf-py, quantized
by llama.cpp to every type, and benched in fresh children over a grid of context and prompt
sizes. ONNX needs the ONNX builder (full install): the model (default: the embedded one) and a
narrow random model are exported to every CPU precision. Then least squares fits:
  GGUF  RSS = base + Σ_type bytes × resident_factor[type] + runtime(KV, buffers: a stand-in, standin.py)
  ONNX  RSS = max(base + f[prec] × matmul bytes + other + KV(fp32) + prompt × vocab × c,
                  base + load[prec] × matmul bytes)     (the second: the transient while loading)
The file names the CPU, the runtime versions and llama.cpp's configuration; plan and build use
it by --calibration FILE or the profile's `calibration:` key.
"""

from __future__ import annotations

import datetime
import importlib.util
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from edgeq import __version__, report
from edgeq.basemodel import random_model, resolve_model
from edgeq.bench import measure_in_child
from edgeq.config import setting
from edgeq.errors import UsageError
from edgeq.export.onnx import OnnxExport, export_onnx
from edgeq.footprint import (
    Dims,
    gguf_runtime,
    gguf_tensor_types,
    kv_cache_bytes,
    onnx_bytes,
    predict_gguf_rss,
    predict_onnx_rss,
)
from edgeq.io import FILE_MARK, claim_output, read_json, write_json
from edgeq.machine import cores, package_version, platform_info
from edgeq.probe import tiny_gguf
from edgeq.runtime import llama_config, quantize
from edgeq.spec import CALIBRATION_SCHEMA, FORMAT_GGUF, FORMAT_ONNX, GGUF_TOKEN_EMBD, quant_names
from edgeq.standin import RuntimeCost
from edgeq.validate import Fields

MIB = 2**20
GGUF_TYPES = quant_names(FORMAT_GGUF, calibrated_only=True)
ONNX_TYPES = quant_names(FORMAT_ONNX, calibrated_only=True)
GEN_TOKENS = 32  # per point; llama.cpp clears its whole KV cache at start, so the answer's length adds nothing
GRID = ((256, 128), (1024, 128), (4096, 128), (1024, 16), (1024, 512))  # (ctx, prompt)
NARROW_GRID = ((256, 128), (512, 128))
# SmolLM2-135M's shape, and a narrow one so the runtime's base separates from the per-weight terms
DEFAULT_SHAPE = {"hidden": 576, "layers": 30, "heads": 9, "kv_heads": 3, "ffn": 1536, "vocab": 49152, "positions": 8192}
NARROW_SHAPE = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 128, "vocab": 49152, "positions": 2048}


@dataclass
class CalibrateConfig:
    out: str = setting(help="calibration JSON to write")
    threads: int | None = setting(None, "runtime threads [default: all cores]", minimum=1)
    onnx: bool | None = setting(None, "measure ONNX too [default: when the ONNX builder is installed]")
    model: str | None = setting(None, "HF model for the ONNX terms [default: the embedded SmolLM2-135M-Instruct]")
    points: str | None = setting(None, "raw measurements: reuse this JSON, else save them there")
    force: bool = setting(False, "replace an existing --out that edgeq wrote")


def _dims(shape: dict):

    return Dims(
        layers=shape["layers"],
        hidden=shape["hidden"],
        heads=shape["heads"],
        kv_heads=shape["kv_heads"],
        head_dim=shape["hidden"] // shape["heads"],
        intermediate=shape["ffn"],
        vocab=shape["vocab"],
        max_positions=shape["positions"],
        tied=True,
    )


def gguf_artifacts(work: Path, tag: str, shape: dict, types) -> list[dict]:

    flt = tiny_gguf(work / f"{tag}.F16.gguf", dims=shape, ftype="F16")
    arts = []
    for q in types:
        path = flt if q == "F16" else work / f"{tag}.{q}.gguf"
        if q != "F16":
            quantize(flt, path, q)
        types_bytes = gguf_tensor_types(flt, q)
        arts.append(
            {"fmt": FORMAT_GGUF, "quant": q, "path": path, "float": flt, "dims": _dims(shape), "types": types_bytes}
        )
    return arts


def onnx_artifacts(model: Path, work: Path, tag: str) -> list[dict]:

    d = Dims.from_config(model)
    arts = []
    for q in ONNX_TYPES:
        path = work / f"{tag}.{q}"
        export_onnx(OnnxExport(model=str(model), out=str(path), quant=q))
        arts.append({"fmt": FORMAT_ONNX, "quant": q, "path": path, "dims": d, "sizes": onnx_bytes(d, q)})
    return arts


def measure_all(arts: list[dict], grid, threads: int, update) -> list[dict]:

    points = []
    for a in arts:
        for ctx, prompt in grid:
            if ctx > a["dims"].max_positions:
                continue
            r = measure_in_child(a["fmt"], a["path"], prompt, GEN_TOKENS, threads, ctx)
            point = {**a, "ctx": ctx, "prompt": prompt, "rss": r["peak_rss_mib"] * MIB}
            if a["fmt"] == FORMAT_GGUF:
                rc = gguf_runtime(point.pop("float"), ctx, prompt, threads, GEN_TOKENS)
                point |= {"runtime_fixed": rc.fixed, "runtime_kv": rc.kv_cache}
            points.append(point)
            update(f"{a['fmt']} {a['quant']} ctx {ctx} prompt {prompt}: {r['peak_rss_mib']:.1f} MiB")
    return points


def fit_gguf(points: list[dict]) -> dict:
    """Least squares with a ridge on the per-type extras: a type is resident twice only if the data say so. What the
    runtime spends beside the weights was measured on a stand-in at each point and is not fitted."""

    types = sorted({t for p in points for t in p["types"]} - {GGUF_TOKEN_EMBD})  # that one is resident once
    X, y = [], []
    for p in points:
        X.append([1.0] + [p["types"].get(t, 0) for t in types])
        y.append(p["rss"] - sum(p["types"].values()) - p["runtime_kv"] - p["runtime_fixed"])
    for i in range(len(types)):  # pull each extra towards 0 with the weight of 4 MiB of evidence
        X.append([0.0] + [4 * MIB * (j == i) for j in range(len(types))])
        y.append(0.0)
    coef = np.linalg.lstsq(np.array(X), np.array(y), rcond=None)[0]
    extra = dict(zip(types, coef[1:], strict=True))
    return {
        "base_mib": round(float(coef[0]) / MIB, 2),
        # only types measurably resident twice get a factor; the rest are served from the mmap (1.0)
        "resident_factor": {t: round(1 + float(e), 3) for t, e in extra.items() if e > 0.1},
    }


def fit_onnx(points: list[dict]) -> dict:
    """Steady state by least squares; points far above it (fp32 loading) set that precision's load factor."""

    quants = sorted({p["quant"] for p in points})

    def rest(p):
        return p["rss"] - p["sizes"]["other"] - kv_cache_bytes(p["dims"], p["ctx"], 4)

    def row(p):  # per precision: resident weight factor, and prefill bytes per token × vocab
        mine = [q == p["quant"] for q in quants]
        return [1.0] + [x for m in mine for x in (p["sizes"]["matmul"] * m, p["prompt"] * p["dims"].vocab * m)]

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
    base = float(coef[0])
    factor = {q: float(coef[1 + 2 * i]) for i, q in enumerate(quants)}
    prompt = {q: float(coef[2 + 2 * i]) for i, q in enumerate(quants)}
    load: dict[str, float] = {}
    for p in loading:
        load[p["quant"]] = max(load.get(p["quant"], 0.0), (p["rss"] - base) / p["sizes"]["matmul"])
    return {
        "base_mib": round(base / MIB, 2),
        "prompt_bytes_per_token_per_vocab": {q: round(c, 3) for q, c in prompt.items()},
        "kv_bytes_per_element": 4,
        "resident_factor": {q: round(f, 3) for q, f in factor.items()},
        "load_factor": {q: round(f, 3) for q, f in load.items()},
    }


def predicted(p: dict, cal: dict) -> float:

    if p["fmt"] == FORMAT_GGUF:
        layers = p["dims"].layers
        runtime = RuntimeCost(p["runtime_fixed"], p["runtime_kv"] / layers, layers)
        return predict_gguf_rss(p["types"], runtime, cal)["total"]
    return predict_onnx_rss(p["dims"], p["quant"], p["ctx"], p["prompt"], cal)["total"]


def _onnx_builder_available() -> bool:

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "onnx_ir"))


def measure(threads: int, onnx: bool, model: str | None) -> list[dict]:
    """Build every calibration artifact in a scratch folder and bench each over its grid."""

    total = len(GGUF_TYPES) * len(GRID) + 3 * len(NARROW_GRID)
    total += len(ONNX_TYPES) * (len(GRID) + len(NARROW_GRID)) if onnx else 0
    with tempfile.TemporaryDirectory(prefix="edgeq-calib-") as tmp, report.progress("calibrate", total) as update:
        work, done = Path(tmp), [0]

        def step(info: str) -> None:
            done[0] += 1
            update(done[0], info)

        points = measure_all(gguf_artifacts(work, "model", DEFAULT_SHAPE, GGUF_TYPES), GRID, threads, step)
        narrow = gguf_artifacts(work, "narrow", NARROW_SHAPE, ("F16", "Q8_0", "Q4_0"))
        points += measure_all(narrow, NARROW_GRID, threads, step)
        if onnx:
            points += measure_all(onnx_artifacts(resolve_model(model), work, "model"), GRID, threads, step)
            narrow_hf = random_model(work / "narrow-hf", resolve_model(None), max_position_embeddings=2048)
            points += measure_all(onnx_artifacts(narrow_hf, work, "narrow"), NARROW_GRID, threads, step)
    return points


POINTS_SCHEMA = "edgeq.calibration-points/2"
_POINTS_FIX = "pass a --points file written by edgeq calibrate, or a new path to measure again"


def save_points(points: list[dict], path: Path) -> None:
    rows = [{**p, "path": str(p["path"]), "dims": asdict(p["dims"])} for p in points]
    write_json(path, {"provenance": f"{FILE_MARK} {__version__}", "schema": POINTS_SCHEMA, "points": rows})


def load_points(path: Path) -> list[dict]:
    """Raw measurements read back: each point's format, type, sizes and measured RSS checked before a fit."""

    f = Fields(read_json(path, "points file", _POINTS_FIX), str(path), _POINTS_FIX, "points file")
    if f.obj.get("schema") != POINTS_SCHEMA:
        raise f.bad("schema", f"is {str(f.obj.get('schema'))[:40]!r}, not {POINTS_SCHEMA!r}")
    points = []
    for i, p in enumerate(f.listing("points", max_items=10_000)):
        at = f"points[{i}]"
        f.mapping(at, p)
        fmt = p.get("fmt")
        if fmt not in (FORMAT_GGUF, FORMAT_ONNX) or p.get("quant") not in quant_names(fmt):
            raise f.bad(at, "names no format and quant type edgeq calibrates")
        for key, lo in (("ctx", 16), ("prompt", 1)):
            f.number(f"{at}.{key}", p.get(key), lo=lo, hi=1 << 20, integer=True)
        f.number(f"{at}.rss", p.get("rss"), lo=1, hi=1 << 50)
        for key in ("runtime_fixed", "runtime_kv") if fmt == FORMAT_GGUF else ():
            f.number(f"{at}.{key}", p.get(key), lo=-(1 << 30), hi=1 << 50)
        dims = f.mapping(f"{at}.dims", p.get("dims"))
        for name in (d.name for d in fields(Dims)):
            if name == "tied":
                continue
            f.number(f"{at}.dims.{name}", dims.get(name), lo=1, hi=1 << 24, integer=True)
        table = "types" if fmt == FORMAT_GGUF else "sizes"
        sizes = f.mapping(f"{at}.{table}", p.get(table))
        for k, v in sizes.items():
            f.number(f"{at}.{table}.{k}", v, lo=0, hi=1 << 50)
        if fmt == FORMAT_ONNX and not {"matmul", "other"} <= set(sizes):
            raise f.bad(f"{at}.sizes", "needs matmul and other")
        points.append({**p, "dims": Dims(**{d.name: dims.get(d.name) for d in fields(Dims)})})
    if not points:
        raise f.bad("points", "is empty")
    return points


def calibrate(cfg: CalibrateConfig) -> dict:
    """Measure, fit, write cfg.out atomically; returns the calibration and every point with its error."""

    saved = Path(cfg.points) if cfg.points else None
    reuse = saved is not None and saved.exists()
    if saved is not None and saved.resolve() == Path(cfg.out).resolve():
        raise UsageError("--points and --out name the same file", str(saved), "give the measurements their own path")
    inputs = [cfg.model, saved if reuse else None]
    out = claim_output(cfg.out, inputs, cfg.force)
    if saved is not None and not reuse:
        claim_output(saved, [cfg.model], option="--points")
    onnx = _onnx_builder_available() if cfg.onnx is None else cfg.onnx
    if onnx and not _onnx_builder_available():
        raise UsageError(
            "--onnx needs the ONNX builder (the full toolchain)", None, 'pip install "edgeq[full]", or pass --no-onnx'
        )
    threads = cfg.threads or cores()
    if reuse:
        points = load_points(saved)
        onnx = any(p["fmt"] == FORMAT_ONNX for p in points)
    else:
        points = measure(threads, onnx, cfg.model)
        if saved:
            save_points(points, saved)
    plat = platform_info()
    measured = {FORMAT_GGUF: list(GGUF_TYPES), FORMAT_ONNX: list(ONNX_TYPES) if onnx else []}
    cal = {
        "schema": CALIBRATION_SCHEMA,
        "measured_on": {
            "date": datetime.date.today().isoformat(),
            "cpu": plat["cpu"],
            "cores": plat["cores_logical"],
            "machine": plat["machine"],
            "cpu_features": plat["cpu_features"],
            "threads": threads,
            "llama_cpp_python": package_version("llama_cpp"),
            "onnxruntime_genai": package_version("onnxruntime_genai"),
        },
        "runtime_config": {"llama_cpp": llama_config()},
        "measured_types": measured,
        "gguf": fit_gguf([p for p in points if p["fmt"] == FORMAT_GGUF]),
        "onnx": fit_onnx([p for p in points if p["fmt"] == FORMAT_ONNX]) if onnx else None,
    }
    rows = []
    for p in points:
        pred = predicted(p, cal)
        rows.append(
            {
                "format": p["fmt"],
                "quant": p["quant"],
                "shape": "narrow" if p["dims"].hidden < 128 else "model",
                "ctx": p["ctx"],
                "prompt": p["prompt"],
                "measured_mib": p["rss"] / MIB,
                "predicted_mib": pred / MIB,
                "error": pred / p["rss"] - 1,
            }
        )
    write_json(out, {"provenance": f"{FILE_MARK} {__version__}", **cal})
    return {"calibration": cal, "points": rows, "out": str(out)}


def view(result: dict):
    """Every point: measured against predicted peak RSS, and the worst error."""
    rows = [
        [
            f"{p['format']} {p['quant']}",
            p["shape"],
            p["ctx"],
            p["prompt"],
            f"{p['measured_mib']:.1f}",
            f"{p['predicted_mib']:.1f}",
            f"{100 * p['error']:+.1f} %",
        ]
        for p in result["points"]
    ]
    worst = max(abs(p["error"]) for p in result["points"])
    return report.table(
        f"calibration written to {result['out']}",
        ["candidate", "shape", "ctx", "prompt", "measured MiB", "predicted MiB", "error"],
        rows,
        caption=f"worst error {100 * worst:.1f} % over {len(rows)} points; "
        f"measured on {result['calibration']['measured_on']['cpu']}",
    )

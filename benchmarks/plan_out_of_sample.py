"""plan's peak-RSS prediction against `edgeq bench`, on model shapes no calibration or fit ever saw.

    python benchmarks/plan_out_of_sample.py --work /tmp/oos [--shapes 30M,360M,...] [--onnx-shapes 30M,...]

Each shape is a random-weight HF model (bf16 safetensors, the default model's tokenizer — or, under its 49152
entries, the test suite's Llama-3-layout one — padded to the shape's vocabulary), exported by edgeq to an F16
GGUF and quantized by llama.cpp to Q8_0, Q4_K_M and a mixed recipe (attention outputs Q8_0, FFN down-projections
Q6_K, over Q4_K_M), and by the ONNX builder to int4 and int8. Each
artifact is measured by bench's own child (one repetition, 256-token prompt, 32 generated) at three contexts up to
8192 and predicted the way plan predicts: GGUF from the artifact's tensor table (llama.cpp's dry run), the base
and residency from the shipped calibration for this machine, the KV cache and llama.cpp's buffers from a stand-in
of the model (standin.py); ONNX from the builder's layout and the calibration's terms. Results are cached in
--work/results.json, so a stopped run resumes (benchmarks/plan_out_of_sample.json: the run of 2026-12-06). Prints
every pair and the worst error.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgeq.basemodel import resolve_model
from edgeq.bench import measure_in_child
from edgeq.calibration import select_calibration
from edgeq.export.gguf import quantize_gguf, write_float_gguf
from edgeq.footprint import Dims, bytes_by_type, dry_run_types, gguf_runtime, predict_gguf_rss, predict_onnx_rss
from edgeq.machine import platform_info
from edgeq.profiles import load_profile
from edgeq.spec import TOKENIZER_FILES

MIB = 2**20
PROMPT, GEN = 256, 32
CONTEXTS = (512, 2048, 8192)
# name: (model_type, hidden, layers, heads, kv_heads, intermediate, vocab, tied)
SHAPES = {
    "30M": ("llama", 384, 6, 6, 6, 1024, 32000, False),  # Llama-2's vocabulary, GQA 1, untied
    "360M": ("llama", 960, 32, 15, 5, 2560, 49152, True),  # SmolLM2-360M's shape, GQA 3
    "0.5B": ("qwen2", 896, 24, 14, 2, 4864, 151936, True),  # Qwen2.5-0.5B's shape, GQA 7, biases on q/k/v
    "0.6B": ("llama", 1536, 16, 16, 2, 4096, 65536, False),  # GQA 8, untied
    "1.2B": ("llama", 2048, 16, 32, 8, 8192, 128256, True),  # Llama-3.2-1B's shape, GQA 4
}
MIXED = {"attn_output": "Q8_0", "ffn_down": "Q6_K"}  # over Q4_K_M; rows of every shape pack these


def make_model(work: Path, name: str) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = work / name / "hf"
    if (out / "config.json").is_file():
        return out
    kind, hidden, layers, heads, kv, inter, vocab, tied = SHAPES[name]
    tok_dir = resolve_model(None)
    if vocab < 49152:  # under the default tokenizer's: a Llama-3-layout one of 800 tokens, padded like the others
        from tests.export.test_tokenizer_families import llama3_tokenizer

        tok_dir = llama3_tokenizer(work / name / "tokenizer")
    cfg = AutoConfig.for_model(
        kind,
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=hidden // heads,
        intermediate_size=inter,
        max_position_embeddings=8192,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    for f in TOKENIZER_FILES:
        if (tok_dir / f).is_file():
            (out / f).write_bytes((tok_dir / f).read_bytes())
    return out


def gguf_artifacts(work: Path, name: str, hf: Path) -> dict:
    flt = work / name / "model.F16.gguf"
    if not flt.is_file():
        write_float_gguf(hf, flt, "F16")
    arts = {}
    for label, quant, recipe in (("Q8_0", "Q8_0", None), ("Q4_K_M", "Q4_K_M", None), ("mixed", "Q4_K_M", MIXED)):
        types = dry_run_types(flt, quant)
        if recipe:
            recipe = {t: q for t in types for part, q in recipe.items() if f".{part}." in t}
            types = dry_run_types(flt, quant, recipe)
        path = work / name / f"model.{label}.gguf"
        if not path.is_file():
            quantize_gguf(flt, path, quant, recipe=recipe)
        arts[label] = (path, bytes_by_type(types))
    return {"float": flt, "artifacts": arts}


def onnx_artifacts(work: Path, name: str, hf: Path) -> dict:
    from edgeq.export.onnx import OnnxExport, export_onnx

    arts = {}
    for quant in ("int4-block32", "int8"):
        path = work / name / f"onnx.{quant}"
        if not path.is_dir():
            export_onnx(OnnxExport(model=str(hf), out=str(path), quant=quant))
        arts[quant] = path
    return arts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--onnx-shapes", default="30M,360M,0.5B")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "results.json"
    results = json.loads(cache.read_text()) if cache.is_file() else {}
    _, cal, _ = select_calibration(None, load_profile("drone"))
    cpu = platform_info()["cpu"]
    for name in args.shapes.split(","):
        hf = make_model(args.work, name)
        d = Dims.from_config(hf)
        g = gguf_artifacts(args.work, name, hf)
        onnx = onnx_artifacts(args.work, name, hf) if name in args.onnx_shapes.split(",") else {}
        for ctx in CONTEXTS:
            for label, (path, types) in g["artifacts"].items():
                key = f"{name} gguf {label} {ctx}"
                if key in results:
                    continue
                t = time.time()
                runtime = gguf_runtime(g["float"], ctx, PROMPT, args.threads, GEN)
                predicted = predict_gguf_rss(types, runtime, cal)["total"] / MIB
                measured = measure_in_child("gguf", path, PROMPT, GEN, args.threads, ctx)["peak_rss_mib"]
                results[key] = {"predicted": predicted, "measured": measured, "seconds": time.time() - t}
                cache.write_text(json.dumps(results, indent=1))
                print(f"{key}: predicted {predicted:.1f} measured {measured:.1f} ({predicted / measured - 1:+.1%})")
            for quant, path in onnx.items():
                key = f"{name} onnx {quant} {ctx}"
                if key in results:
                    continue
                predicted = predict_onnx_rss(d, quant, ctx, PROMPT, cal)["total"] / MIB
                measured = measure_in_child("onnx", path, PROMPT, GEN, args.threads, ctx)["peak_rss_mib"]
                results[key] = {"predicted": predicted, "measured": measured}
                cache.write_text(json.dumps(results, indent=1))
                print(f"{key}: predicted {predicted:.1f} measured {measured:.1f} ({predicted / measured - 1:+.1%})")
    print(f"\n| shape | artifact | ctx | measured MiB | predicted MiB | error |  ({cpu})")
    print("|---|---|---|---|---|---|")
    worst = {}
    for key, r in results.items():
        name, fmt, label, ctx = key.split()
        err = r["predicted"] / r["measured"] - 1
        worst[fmt] = max(worst.get(fmt, 0.0), abs(err))
        print(f"| {name} | {fmt} {label} | {ctx} | {r['measured']:.1f} | {r['predicted']:.1f} | {err:+.1%} |")
    print("worst error: " + ", ".join(f"{fmt} {100 * w:.1f} %" for fmt, w in worst.items()))


if __name__ == "__main__":
    main()

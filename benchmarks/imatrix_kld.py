"""Does the importance matrix lower KLD? Each low-bit GGUF type with and without it, in one run.

    python benchmarks/imatrix_kld.py --model runs/demo/merged [--calib examples/drone/train.jsonl]
                                     [--heldout examples/drone/test.jsonl]

One F16 GGUF of the model is written, then quantized by llama.cpp per type twice (plain, and with
an imatrix computed on the calibration data); each is compared with the HF float model on the
held-out task conversations (never seen by the imatrix): mean KLD and top-1 agreement.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

TYPES = ["Q4_K_M", "Q4_K_S", "IQ4_XS", "Q3_K_M", "Q2_K"]


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeq.evaluate import compare, reference_logits
    from edgeq.export.gguf import quantize_gguf, write_float_gguf
    from edgeq.export.imatrix import compute_imatrix
    from edgeq.runtime import logits
    from edgeq.task import load_task

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", default="examples/drone/train.jsonl")
    ap.add_argument("--heldout", default="examples/drone/test.jsonl")
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()
    model_dir = Path(args.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    task = load_task(args.heldout)
    prompts, refs = task.prompts, task.refs
    text = "".join(
        tok.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=False)
        for p, r in zip(prompts, refs, strict=True)
    )
    ids = tok.encode(text, add_special_tokens=False)[:2048]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ref = reference_logits(model, ids)
    matrix, info = compute_imatrix(model_dir, args.calib)
    print(
        f"imatrix: {info['tensors']} tensors from {info['tokens']} tokens of {args.calib}; "
        f"held-out: {len(ids)} tokens of {args.heldout}"
    )
    print("| type | KLD plain | KLD imatrix | ratio | top-1 plain | top-1 imatrix |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        f16 = Path(tmp) / "f16.gguf"
        write_float_gguf(model_dir, f16, "F16")
        for q in args.types.split(","):
            row = {}
            for label, imx in (("plain", None), ("imatrix", matrix)):
                out = Path(tmp) / f"{q}-{label}.gguf"
                quantize_gguf(f16, out, q, imx)
                row[label] = compare(ref, logits(out, ids), ids)
                out.unlink()
            a, b = row["plain"], row["imatrix"]
            print(
                f"| {q} | {a['mean_kld']:.4f} | {b['mean_kld']:.4f} | {b['mean_kld'] / a['mean_kld']:.2f}x | "
                f"{100 * a['top1_agreement']:.1f} | {100 * b['top1_agreement']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

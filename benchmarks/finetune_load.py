"""The fine-tune's loading moment: peak RSS of `edgeq.finetune.setup` (the base read, quantized or cast, LoRA
attached, the optimizer made; no step) for one random-weight model saved as one safetensors file and as shards of
100 MB, QLoRA and LoRA on a 16-bit base, each in a fresh process; beside each, trainplan's load moment.

    python benchmarks/finetune_load.py --work DIR
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from importlib.resources import files
from pathlib import Path

# SmolLM2-360M's shape, bf16 (a 690 MiB checkpoint), the default model's tokenizer
SHAPE = {"hidden_size": 960, "num_hidden_layers": 32, "num_attention_heads": 15, "num_key_value_heads": 5}
SHAPE |= {"head_dim": 64, "intermediate_size": 2560, "max_position_embeddings": 2048}
LAYOUTS = {"one file": "10GB", "shards of 100 MB": "100MB"}


def make(work: Path) -> dict[str, Path]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from edgeq.basemodel import ensure_default_model
    from edgeq.spec import TOKENIZER_FILES

    tok, out = ensure_default_model(), {}
    for name, shard in LAYOUTS.items():
        path = out[name] = work / shard
        if (path / "config.json").is_file():
            continue
        torch.manual_seed(0)
        cfg = AutoConfig.for_model("llama", vocab_size=49152, tie_word_embeddings=True, **SHAPE)
        AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(path, max_shard_size=shard)
        for f in TOKENIZER_FILES:
            if (tok / f).is_file():
                (path / f).write_bytes((tok / f).read_bytes())
    return out


def one(model: str, method: str) -> float:
    """In a fresh process: the fine-tune's setup at batch 1; its peak RSS in MiB."""
    from edgeq.finetune import FinetuneConfig, setup
    from edgeq.spec import BUILD_EXAMPLE_DATA, SHIPPED_EXAMPLES

    with tempfile.TemporaryDirectory() as out:
        data = str(files(SHIPPED_EXAMPLES) / BUILD_EXAMPLE_DATA)
        setup(FinetuneConfig(data=data, out=out, base=model, method=method, batch_size=1))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    from edgeq.finetune import checkpoint_size, compute_dtype, dtype_bytes
    from edgeq.footprint import Dims
    from edgeq.machine import platform_info
    from edgeq.trainplan import CALIBRATION, predict_finetune

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    a = ap.parse_args()
    print(f"CPU: {platform_info()['cpu']}")
    print("| checkpoint | method | peak RSS MiB measured → trainplan's load moment |")
    print("|---|---|---|")
    for name, path in make(a.work).items():
        for method in ("qlora", "lora"):
            code = f"import benchmarks.finetune_load as b; print(b.one({str(path)!r}, {method!r}))"
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            measured = float(r.stdout.splitlines()[-1])
            d, width = Dims.from_config(path), dtype_bytes(compute_dtype("cpu"))
            p = predict_finetune(d, CALIBRATION, 1, 16, False, checkpoint_size(path), 1, method, width)
            method = "QLoRA" if method == "qlora" else "LoRA, 16-bit base"
            error = 100 * (p.load_mib / measured - 1)
            print(f"| {name} | {method} | {measured:.0f} → {p.load_mib:.0f} ({error:+.1f} %) |", flush=True)


if __name__ == "__main__":
    main()

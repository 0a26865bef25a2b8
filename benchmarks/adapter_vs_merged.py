"""One fine-tune served two ways, side by side at each quant type: merged into its base and quantized (what
`edgeq build` ships), and the base quantized with the LoRA adapter beside it in F16 (what several skills on one
device need). Both quantized the same way (no importance matrix), both scored by `edgeq eval` against the merged
float model and measured by `edgeq bench`'s own child.

    python benchmarks/adapter_vs_merged.py BUILD [--quants Q8_0 Q4_K_M] [--test-data T] [--limit N]

BUILD: a finished `edgeq build` of an adapter method (qlora or lora). Prints per quant type and way: the task score
as served and as evaluated, mean KLD and top-1 on the fidelity text, the bytes on disk, peak RSS and decode tok/s
(256-token prompt, 64 generated, 2048 context, all cores).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from importlib.resources import files
from pathlib import Path

from edgeq.spec import BUILD_EXAMPLE_TEST, BUILD_FLOAT_GGUF, BUILD_STATE_DIR, SHIPPED_EXAMPLES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", type=Path)
    ap.add_argument("--quants", nargs="+", default=["Q8_0", "Q4_K_M"])
    ap.add_argument("--test-data", default=str(files(SHIPPED_EXAMPLES) / BUILD_EXAMPLE_TEST))
    ap.add_argument("--limit", type=int, default=None, help="only the first N held-out examples")
    args = ap.parse_args()

    from edgeq.bench import measure_in_child
    from edgeq.evaluate import evaluate
    from edgeq.export.adapter import export_adapter
    from edgeq.export.gguf import GgufExport, write_f16_gguf
    from edgeq.machine import cores, platform_info
    from edgeq.runtime import quantize
    from edgeq.spec import FORMAT_GGUF

    state = args.build / BUILD_STATE_DIR
    manifest = json.loads((args.build / "manifest.json").read_text())
    base_dir, merged = Path(manifest["inputs"]["base"]["path"]), state / "merge" / "model"
    info = platform_info()
    print(f"{info['cpu']} ({', '.join(info['cpu_features'])}); build {args.build}, base {base_dir}")
    print(f"{'quant':7} {'served as':22} {'served':>7} {'eval':>6} {'KLD':>7} {'top-1':>6} {'MiB':>7} "
          f"{'RSS MiB':>8} {'tok/s':>6}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base_f16 = work / "base.F16.gguf"
        write_f16_gguf(base_dir, base_f16)
        adapter = work / "adapter.F16.gguf"
        export_adapter(GgufExport(out=str(adapter), model=str(base_dir), adapter=str(state / "finetune")))
        for quant in args.quants:
            ways = {
                "merged": (work / f"merged.{quant}.gguf", None),
                "base + adapter": (work / f"base.{quant}.gguf", adapter),
            }
            quantize(state / "plan" / BUILD_FLOAT_GGUF, ways["merged"][0], quant)
            quantize(base_f16, ways["base + adapter"][0], quant)
            for way, (path, extra) in ways.items():
                r = evaluate(path, merged, args.test_data, args.limit, served=True, adapter=extra)
                run = measure_in_child(
                    FORMAT_GGUF, path, 256, 64, cores(), 2048, adapters=[str(extra)] if extra else []
                )
                mib = (path.stat().st_size + (extra.stat().st_size if extra else 0)) / 2**20
                print(f"{quant:7} {way:22} {r.served.score:7.1f} {r.task.score:6.1f} {r.text.mean_kld:7.4f} "
                      f"{100 * r.text.top1_agreement:6.1f} {mib:7.1f} {run['peak_rss_mib']:8.1f} "
                      f"{run['decode_tok_s']:6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()

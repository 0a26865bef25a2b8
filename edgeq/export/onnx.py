"""HF model directory → ONNX with KV cache for ONNX Runtime GenAI, through its own model builder.

Not optimum: optimum-onnx pins transformers < 4.58, and the GenAI builder's graph is smaller and
faster. The builder runs in a subprocess (its memory is returned when it exits; its prints stay
out of ours). Gates before anything reaches --out: genai_config.json present, onnxruntime-genai
loads the model and greedy-generates, and for fp32 the ONNX logits agree with HF float32
(top-1 >= GATE_MIN_TOP1). A miss fails the export; optimum only warns.

int4: the builder's graph is kept and its weights are quantized again by onnxquant (importance-weighted blocks
with zero points, the tied embedding/head at 8 bits, as llama.cpp's Q4_K_M keeps token_embd at 8 bits): on the
drone fine-tune mean KLD falls from the builder's 0.55 (benchmarks/RESULTS.md, "ONNX 4-bit").
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from edgeq import report, templates
from edgeq.basemodel import load_tokenizer, resolve_model, weights_bytes
from edgeq.child import python_command, run_process
from edgeq.config import setting
from edgeq.data import read_jsonl
from edgeq.errors import BudgetError, EdgeqError, UsageError
from edgeq.evaluate import GATE_TOKENS, compare_logits, fidelity_ids
from edgeq.export import ExportConfig, onnxquant
from edgeq.export.imatrix import imatrix_for, refuse_unweighted
from edgeq.footprint import Dims, onnx_bytes, tokenizer_bytes
from edgeq.io import atomic_dir, check_free_disk, claim_output
from edgeq.records import ExportResult
from edgeq.runtime import artifact_bytes, generate
from edgeq.spec import (
    DEFAULT_QUANT,
    FORMAT_ONNX,
    GATE_MIN_TOP1,
    ONNX_AUTO_LAYOUT,
    ONNX_EXECUTION_PROVIDERS,
    QUANT_AUTO,
    QUANT_TYPES,
    TOKENIZER_FILES,
    quant_names,
)


@dataclass
class OnnxExport(ExportConfig):
    execution_provider: str = setting(ONNX_EXECUTION_PROVIDERS[0], "the ONNX target", choices=ONNX_EXECUTION_PROVIDERS)

    def __post_init__(self):
        self.quant = self.quant or DEFAULT_QUANT[FORMAT_ONNX]


def builder_args(model_dir: Path, out: Path, cache: Path, quant: str, ep: str) -> list[str]:
    """The builder in an isolated interpreter (child.py): nothing in the working directory is importable."""

    precision, block = QUANT_TYPES[quant].onnx_precision, QUANT_TYPES[quant].block_size
    args = python_command(
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(model_dir.resolve()),
        "-o",
        str(out.resolve()),
        "-p",
        precision,
        "-e",
        ep,
        "-c",
        str(cache.resolve()),
    )
    if block:
        args += ["--extra_options", f"block_size={block}"]
    return args


def ort_providers() -> list[str]:
    import onnxruntime  # deferred: a native runtime, loaded only where it runs

    return onnxruntime.get_available_providers()


def gate_generates(model_dir: Path, tok) -> dict:
    """onnxruntime-genai loads the folder and greedy-decodes a chat prompt."""

    prompt = templates.render(tok, [{"role": "user", "content": "Say hello."}], True)
    ids = generate(model_dir, [tok.encode(prompt, add_special_tokens=False)], 16, [])[0]
    if not ids:
        raise EdgeqError("onnxruntime-genai generated no tokens", str(model_dir))
    return {"generated_tokens": len(ids)}


def gate_fidelity(onnx_dir: Path, model_dir: Path, tok) -> dict:
    """The fp32 ONNX model against the HF float32 model: top-1 agreement."""

    ids = fidelity_ids(tok, GATE_TOKENS)
    r = compare_logits(onnx_dir, model_dir, ids)
    top1, max_abs = r.top1_agreement, r.max_abs_logit
    if top1 < GATE_MIN_TOP1:
        raise EdgeqError(
            f"fp32 ONNX disagrees with the HF model: top-1 {top1:.3f} (need ≥ {GATE_MIN_TOP1})",
            str(onnx_dir),
            "the ONNX graph is wrong for this model; report it",
        )
    return {"positions": len(ids), "top1": top1, "max_abs_logit": max_abs, "min_top1": GATE_MIN_TOP1}


def builder_layout(quant: str) -> str:
    """The builder's precision and block for --quant: --quant auto starts from ONNX_AUTO_LAYOUT."""
    return ONNX_AUTO_LAYOUT if quant == QUANT_AUTO else quant


def is_int4(quant: str) -> bool:
    """int4 blocks: what edgeq requantizes after the builder (int8 and fp32 are the builder's own)."""
    return QUANT_TYPES[builder_layout(quant)].onnx_precision == "int4"


def export_onnx(cfg: OnnxExport) -> ExportResult:

    if cfg.quant not in (*quant_names(FORMAT_ONNX), QUANT_AUTO):
        valid = ", ".join((*quant_names(FORMAT_ONNX), QUANT_AUTO))
        raise UsageError(f"unknown ONNX precision {cfg.quant!r}", None, f"valid: {valid}")
    if (cfg.quant == QUANT_AUTO) != (cfg.max_size_mib is not None):
        raise UsageError(f"--quant {QUANT_AUTO} and --max-size-mib go together", None, "pass both, or neither")
    kind = builder_layout(cfg.quant)
    if cfg.imatrix_data or cfg.imatrix:
        refuse_unweighted(cfg.quant, kind)
    if cfg.quant == "fp16" and cfg.execution_provider == "cpu":
        raise UsageError("fp16 ONNX targets GPUs", None, "use --execution-provider cuda, or int8/int4/fp32 on CPU")
    inputs = [cfg.model, cfg.imatrix_data, cfg.imatrix]
    out = claim_output(cfg.out, inputs, cfg.force)
    if cfg.imatrix_data:  # read now: a bad file fails before the minutes of export, not after them
        read_jsonl(cfg.imatrix_data)
    model_dir = resolve_model(cfg.model, cfg.allow_pickle)
    if cfg.quant == QUANT_AUTO:
        check_reachable(model_dir, cfg.max_size_mib)
    check_free_disk(out.parent, 2 * weights_bytes(model_dir), "the ONNX export")
    tok = load_tokenizer(model_dir)
    with (
        atomic_dir(out, force=cfg.force, protect=[model_dir, *inputs]) as tmp,
        tempfile.TemporaryDirectory(prefix=".edgeq-tmp-", dir=out.parent) as cache,
    ):
        report.err.print(f"building {kind} ONNX with onnxruntime-genai's model builder …")
        try:
            run_process(
                builder_args(model_dir, tmp, Path(cache), kind, cfg.execution_provider),
                "onnxruntime-genai's model builder",
                str(model_dir),
            )
        except EdgeqError as e:
            if e.fix:  # a time limit or a crash says what to do itself
                raise
            model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
            fix = f"the builder does not take this {model_type} model as configured; export GGUF (--format gguf)"
            raise EdgeqError(e.what, e.where, fix) from None
        if not (tmp / "genai_config.json").is_file():
            raise EdgeqError("the builder wrote no genai_config.json", str(tmp))
        for name in TOKENIZER_FILES:  # the chat template and tokenizer travel with the artifact
            if (model_dir / name).is_file() and not (tmp / name).exists():
                shutil.copyfile(model_dir / name, tmp / name)
        recipe = None
        if is_int4(cfg.quant):
            recipe = requantize_int4(tmp, model_dir, cfg, kind)
        runnable = cfg.execution_provider == "cpu" or "CUDAExecutionProvider" in ort_providers()
        gates = {"generates": gate_generates(tmp, tok) if runnable else "skipped: no CUDA execution provider here"}
        if kind == "fp32":
            gates["fidelity"] = gate_fidelity(tmp, model_dir, tok)
        size = artifact_bytes(tmp)
    return ExportResult(
        path=str(out),
        fmt=FORMAT_ONNX,
        quant=cfg.quant,
        bytes=size,
        bits_per_weight=QUANT_TYPES[kind].bits_per_weight,  # nominal: the builder's precision
        gates=gates,
        execution_provider=cfg.execution_provider,
        quant_recipe=recipe,
    )


def check_reachable(model_dir: Path, max_size_mib: float) -> None:
    """Exit 3 before anything is built where even every weight at its smallest choice misses --max-size-mib: the
    weights, norms and RoPE caches (plan's layout) and the tokenizer files alone are larger."""

    sizes = onnx_bytes(Dims.from_config(model_dir), ONNX_AUTO_LAYOUT, auto=min)
    smallest = sum(sizes.values()) + tokenizer_bytes(model_dir)
    if smallest > max_size_mib * 2**20:
        raise BudgetError(
            f"the smallest 4-bit ONNX artifact of this model is over {smallest / 2**20:.1f} MiB; "
            f"--max-size-mib is {max_size_mib:g}",
            str(model_dir),
            f"raise --max-size-mib above {smallest / 2**20:.1f}, or export GGUF",
        )


def requantize_int4(onnx_dir: Path, model_dir: Path, cfg: OnnxExport, kind: str) -> dict:
    """The builder's int4 weights quantized again (onnxquant): the default bits, or with --quant auto the bits and
    block sizes the solver picks for --max-size-mib. What was done, for the manifest."""

    auto = cfg.quant == QUANT_AUTO
    imatrix, summary = imatrix_for(model_dir, cfg.imatrix, cfg.imatrix_data)
    block = QUANT_TYPES[kind].block_size
    default_palette = onnxquant.default_palette(block)
    report.err.print(f"quantizing {kind} weights (importance-weighted blocks, zero points) …")
    fits = onnxquant.fit_all(onnx_dir, model_dir, imatrix, onnxquant.auto_palette if auto else default_palette)
    # auto: written first with every weight at its smallest choice, which measures the bytes that are not weights
    layout = {stem: onnxquant.smallest(fits, stem) for stem, _, _ in fits}
    account = onnxquant.requantize(onnx_dir, fits, layout)
    solved = None
    if auto:
        budget, smallest = cfg.max_size_mib * 2**20, artifact_bytes(onnx_dir)
        if smallest > budget:
            raise BudgetError(
                f"the smallest 4-bit ONNX artifact of this model is {smallest / 2**20:.1f} MiB; "
                f"--max-size-mib is {cfg.max_size_mib:g}",
                str(model_dir),
                f"raise --max-size-mib to {smallest / 2**20:.1f} or more, or export GGUF",
            )
        other = smallest - sum(a["bytes"] for a in account.values())  # norms, caches, tokenizer
        layout = onnxquant.solve_layout(fits, budget - other)
        account = onnxquant.requantize(onnx_dir, fits, layout)
        size = artifact_bytes(onnx_dir)
        if size > budget:  # the layout is exact: a miss is a defect, not a budget problem
            raise EdgeqError(f"the solved ONNX artifact is {size / 2**20:.2f} MiB, over its budget", str(onnx_dir))
        solved = {"max_size_mib": cfg.max_size_mib, "error": sum(a["error"] for a in account.values())}
    written = {stem: f"{a['bits']}/{a['block']}" for stem, a in account.items()}  # bits/block of every weight
    return {
        "method": onnxquant.METHOD,
        "layout": written,
        "counts": dict(sorted(Counter(written.values()).items())),
        "importance": summary or "none: every input column weighted alike (pass --imatrix-data)",
        **({"solver": solved} if solved else {}),
    }


def export_table(r: ExportResult):
    """The export and its gates at a glance (the CLI prints it)."""

    rows = [
        ["artifact", r.path],
        ["precision", r.quant],
        ["size", f"{r.bytes / 2**20:.1f} MiB"],
        *_recipe_rows(r.quant_recipe),
        ["generates", str(r.gates["generates"])],
    ]
    if "fidelity" in r.gates:
        rows.append(["fp32 vs HF float32", f"top-1 {r.gates['fidelity']['top1']:.3f}"])
    return report.table("export", ["", ""], rows)


def _recipe_rows(recipe: dict | None) -> list[list[str]]:
    if not recipe:
        return []
    counts = ", ".join(f"{n} at {layout}" for layout, n in recipe["counts"].items())
    imp = recipe["importance"]
    source = f"importance matrix of {imp['source']}" if isinstance(imp, dict) else "no importance matrix"
    rows = [["weights (bits/block)", f"{counts}; {source}"]]
    if "solver" in recipe:
        rows.append(["size budget", f"{recipe['solver']['max_size_mib']:g} MiB (bits and blocks solved for it)"])
    return rows

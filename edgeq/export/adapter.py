"""A LoRA adapter on its own: a GGUF of type `adapter` that llama.cpp applies to a GGUF of its base at run time
(`edgeq run BASE.gguf --adapter A.gguf`), so one base on the device serves several fine-tunes.

llama.cpp's adapter layout: `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and for each
adapted weight W of the base (named as in the base's GGUF) the pair `W.lora_a` (r × in) and `W.lora_b` (out × r);
it adds (alpha / r) · B · A to W. Where the base's q/k rows were permuted for llama.cpp's rope, B's rows are
permuted the same way (P·W + s·(P·B)·A = P·(W + s·B·A)); A is untouched.

The export's gate: a float GGUF of the base plus the adapter, run by llama.cpp, against the HF base with the peft
adapter in float32 on the fidelity text (top-1 and max |Δlogit| within the adapter's float type's bounds). The
adapter names its base by content (`edgeq.adapter.base_sha256`); a GGUF of another base is refused when both are
loaded (ggufcheck.check_adapter).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from edgeq import __version__, report
from edgeq.basemodel import base_fingerprint, load_tokenizer, resolve_model
from edgeq.errors import EdgeqError, UsageError
from edgeq.evaluate import GATE_TOKENS, compare, fidelity_ids, reference_logits
from edgeq.export import tensor_names
from edgeq.export.gguf import GgufExport, rope_rows, write_float_gguf
from edgeq.ggufcheck import check_adapter, check_gguf
from edgeq.io import FILE_MARK, atomic_path, claim_output
from edgeq.merge import adapter_config, find_adapter, trained_manifest
from edgeq.records import AdapterResult
from edgeq.runtime import logits
from edgeq.spec import (
    ADAPTER_BASE_KEY,
    ADAPTER_FLOAT_TYPES,
    GATE_MIN_TOP1,
    GGUF_ARCHS,
    GGUF_PROVENANCE_KEY,
    QUANT_TYPES,
)

_PEFT_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight")
_FIX = "export an adapter that edgeq finetune wrote (plain LoRA: no DoRA, rsLoRA or extra trained modules)"


def check_plain_lora(adapter_dir: Path, acfg: dict) -> None:
    """What llama.cpp's adapter cannot carry is refused: it adds (alpha / r) · B · A and nothing else."""
    for key, what in (("use_dora", "DoRA"), ("use_rslora", "rsLoRA's alpha / √r scale")):
        if acfg.get(key):
            raise UsageError(f"the adapter uses {what}, which GGUF LoRA cannot express", str(adapter_dir), _FIX)
    if acfg.get("modules_to_save") or acfg.get("bias", "none") != "none":
        raise UsageError("the adapter trains modules or biases beside LoRA", str(adapter_dir), _FIX)


def write_gguf_adapter(adapter_dir: Path, base_dir: Path, path: Path, ftype: str, base_sha: str) -> dict:
    """The adapter's A/B pairs under the base's GGUF tensor names, in `ftype`; what was written."""
    from gguf import GGUFWriter  # deferred: gguf-py's import costs the CLI's start-up
    from gguf.constants import Keys
    from safetensors.torch import load_file
    from transformers import AutoConfig

    acfg = adapter_config(adapter_dir)
    check_plain_lora(adapter_dir, acfg)
    cfg = AutoConfig.from_pretrained(base_dir)
    arch = GGUF_ARCHS.get(cfg.model_type)
    if arch is None:
        raise UsageError(f"architecture {cfg.model_type!r} is not supported for GGUF export", str(base_dir))
    names = tensor_names(cfg, arch)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, t in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        m = _PEFT_KEY.fullmatch(key)
        if m is None:
            raise UsageError(f"adapter tensor {key!r} is not a LoRA A or B weight", str(adapter_dir), _FIX)
        pairs.setdefault(m["module"] + ".weight", {})[m["part"]] = t.float().numpy()
    w = GGUFWriter(str(path), arch.gguf_arch)
    w.add_string(GGUF_PROVENANCE_KEY, f"{FILE_MARK} {__version__}")
    w.add_type("adapter")
    w.add_string(Keys.Adapter.TYPE, "lora")
    w.add_float32(Keys.Adapter.LORA_ALPHA, float(acfg["lora_alpha"]))
    w.add_string(ADAPTER_BASE_KEY, base_sha)
    dtype = np.float16 if ftype == "F16" else np.float32
    params = 0
    for hf_name, ab in sorted(pairs.items()):
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None or set(ab) != {"A", "B"}:
            what = "has no GGUF name" if name is None else "lacks its A or B half"
            raise UsageError(f"adapter weight {hf_name!r} {what} for {cfg.model_type}", str(adapter_dir), _FIX)
        a, b = ab["A"], rope_rows(ab["B"], hf_name, cfg, arch)  # (r, in), (out, r): B's rows are W's
        w.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a, dtype=dtype))
        w.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b, dtype=dtype))
        params += a.size + b.size
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"rank": int(acfg["r"]), "alpha": float(acfg["lora_alpha"]), "weights": len(pairs), "params": params}


def peft_logits(base_dir: Path, adapter_dir: Path, ids: list[int]) -> np.ndarray:
    """(T, vocab) float64 logits of the HF base with the peft adapter, both in float32: the adapter's reference."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return reference_logits(PeftModel.from_pretrained(base, adapter_dir).eval(), ids)


def gate_adapter(base_gguf: Path, adapter_gguf: Path, base_dir: Path, adapter_dir: Path, tok, ftype: str) -> dict:
    """llama.cpp's base + adapter against peft's on the fidelity text: top-1 and max |Δlogit| within ftype's gate."""
    ids = fidelity_ids(tok, GATE_TOKENS)
    r = compare(peft_logits(base_dir, adapter_dir, ids), logits(base_gguf, ids, adapters=[adapter_gguf]), ids)
    limit = QUANT_TYPES[ftype].gate_max_abs_logit
    if r.top1_agreement < GATE_MIN_TOP1 or r.max_abs_logit > limit:
        raise EdgeqError(
            f"the {ftype} adapter on the base's GGUF disagrees with peft: top-1 {r.top1_agreement:.3f} (need ≥ "
            f"{GATE_MIN_TOP1}), max |Δlogit| {r.max_abs_logit:.3g} (need ≤ {limit})",
            str(adapter_gguf),
            "the adapter's conversion is wrong for this architecture; report it",
        )
    return {"positions": len(ids), "top1": r.top1_agreement, "max_abs_logit": r.max_abs_logit, "mean_kld": r.mean_kld}


def export_adapter(cfg: GgufExport) -> AdapterResult:
    """`edgeq export --adapter RUN --model BASE --out A.gguf`: the fine-tune's adapter for a GGUF of BASE."""
    ftype = cfg.quant if cfg.quant in ADAPTER_FLOAT_TYPES else None
    if ftype is None:
        raise UsageError(
            f"an adapter is exported in a float type, not {cfg.quant}",
            None,
            f"pass --quant {' or --quant '.join(ADAPTER_FLOAT_TYPES)}",
        )
    adapter_dir = find_adapter(cfg.adapter)
    base_dir = resolve_model(cfg.model, cfg.allow_pickle)
    base_sha = base_fingerprint(base_dir)
    trained = trained_manifest(adapter_dir)
    if trained and trained["inputs"]["base_sha256"] != base_sha:
        raise UsageError(
            f"the adapter was trained on base {trained['inputs']['base_sha256'][:12]}, --model is {base_sha[:12]}",
            str(adapter_dir),
            f"pass --model {trained['inputs']['base']} (the base it was trained on)",
        )
    out = claim_output(cfg.out, [cfg.adapter, cfg.model], cfg.force)
    tok = load_tokenizer(base_dir)
    with (
        atomic_path(out, force=cfg.force, protect=[adapter_dir, base_dir]) as tmp,
        tempfile.TemporaryDirectory(prefix=".edgeq-tmp-", dir=out.parent) as scratch,
    ):
        report.err.print(f"writing the {ftype} GGUF adapter …")
        info = write_gguf_adapter(adapter_dir, base_dir, tmp, ftype, base_sha)
        base = Path(scratch) / "base.F32.gguf"
        report.err.print("checking it on an F32 GGUF of the base against peft …")
        write_float_gguf(base_dir, base, "F32")
        check_adapter(check_gguf(base), check_gguf(tmp), str(tmp))
        gate = gate_adapter(base, tmp, base_dir, adapter_dir, tok, ftype)
        size = tmp.stat().st_size
    return AdapterResult(
        path=str(out), base=str(base_dir), base_sha256=base_sha, float_type=ftype, bytes=size, gate=gate, **info
    )


def adapter_table(r: AdapterResult):
    """The adapter export and its gate at a glance (the CLI prints it)."""
    rows = [
        ["adapter", r.path],
        ["for base", f"{r.base} (sha256 {r.base_sha256[:12]}…)"],
        ["LoRA", f"rank {r.rank}, alpha {r.alpha:g}, {r.weights} weights, {r.params:,} parameters"],
        ["size", f"{r.bytes / 2**20:.2f} MiB ({r.float_type})"],
        ["F32 base + adapter vs peft", f"top-1 {r.gate['top1']:.3f}, max |Δlogit| {r.gate['max_abs_logit']:.3g}"],
    ]
    return report.table("adapter export", ["", ""], rows)

"""`edgeq merge`: fold a LoRA adapter into an un-quantized base and prove the merge is exact.

Never merges into 4-bit weights (peft re-quantizes with rounding error, peft#2321). Two policies:
  dequantized  the base after the NF4/FP4 round trip — the weights the adapter was trained
               against, so the merged model reproduces the QLoRA model (the default)
  pristine     the original base weights — what most tools do; measured in benchmarks/RESULTS.md
Before anything is written: merged logits vs base + adapter (unmerged) on fixed inputs within
MERGE_TOLERANCE, and no NaN/Inf in any weight. Both sides run in float64, so the check sees the merge
itself and not float32 summation order (which alone moves SmolLM2's logits by ~1e-4 over 30 layers).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from edgeq import __version__, report
from edgeq.basemodel import MODEL_HELP, base_fingerprint, load_tokenizer, resolve_model, weights_bytes
from edgeq.config import problems, setting
from edgeq.errors import ConfigError, EdgeqError, UsageError
from edgeq.io import (
    atomic_dir,
    check_folder,
    check_free_disk,
    check_safetensors,
    claim_output,
    read_json,
    sha256_file,
    write_json,
    write_text,
)
from edgeq.machine import versions
from edgeq.records import MergeCheck, MergeResult
from edgeq.serving import embed
from edgeq.spec import (
    FINETUNE_MANIFEST,
    MANIFEST_SCHEMA,
    MERGE_DTYPES,
    MERGE_MANIFEST,
    MERGE_POLICIES,
    MERGE_TOLERANCE,
    NF4_BLOCKSIZE,
    QUANT_MODES,
    TOKENIZER_FILES,
    UNQUANTIZED,
)
from edgeq.validate import Fields

# Fixed verification inputs: a chat turn, numbers, code and prose.
VERIFY_TEXTS = (
    "<|im_start|>user\nTake off to 35 meters and hover for 10 seconds.<|im_end|>\n<|im_start|>assistant\n",
    "Coordinates 47.3769, 8.5417 at 120 m; battery 18 %.",
    "def area(r):\n    return 3.14159 * r ** 2\n",
    "The companion computer shares its memory with the vision pipeline.",
)


@dataclass
class MergeConfig:
    adapter: str = setting(help="adapter directory, or the finetune --out holding it")
    out: str = setting(help="output HF model directory")
    base: str | None = setting(None, MODEL_HELP)
    dtype: str = setting(MERGE_DTYPES[0], "saved weight dtype", choices=MERGE_DTYPES)
    merge_into: str = setting(
        MERGE_POLICIES[0],
        "base weights to merge into: after the 4-bit round trip (what training saw) or the original ones",
        choices=MERGE_POLICIES,
    )
    force: bool = setting(False, "replace an existing --out (kept intact if the merge fails)")
    system_prompt: str | None = setting(
        None, "default system prompt of the merged model's chat template (served when a request has none)"
    )

    def check(self) -> None:
        if p := problems(self):
            raise ConfigError(p, "merge options")


_ADAPTER_FIX = "pass the adapter directory that edgeq finetune wrote"


def find_adapter(path: str | Path) -> Path:
    """The adapter folder (or the finetune --out holding it), contained and with a readable config and weights."""
    path = Path(path)
    for cand in (path, path / "adapter"):
        if (cand / "adapter_config.json").is_file():
            check_folder(cand, "adapter folder")
            adapter_config(cand)
            weights = cand / "adapter_model.safetensors"
            if not weights.is_file():
                raise UsageError("no adapter_model.safetensors", str(cand), _ADAPTER_FIX)
            check_safetensors(weights)
            return cand
    if (path / "model" / FINETUNE_MANIFEST).is_file():
        raise UsageError(
            "a full fine-tune's model, not an adapter: there is nothing to merge",
            str(path / "model"),
            "export that folder directly (edgeq export --model " + str(path / "model") + ")",
        )
    raise UsageError("no adapter_config.json", str(path), _ADAPTER_FIX)


def adapter_config(adapter_dir: Path) -> dict:
    """adapter_config.json with the fields merge reads checked: rank, scale and target modules."""
    path = adapter_dir / "adapter_config.json"
    f = Fields(read_json(path, "adapter_config.json", _ADAPTER_FIX, 1 << 20), str(path), _ADAPTER_FIX, "adapter config")
    f.number("r", lo=1, hi=1 << 12, integer=True)
    f.number("lora_alpha", lo=0, hi=1 << 16)
    targets = f.listing("target_modules", max_items=1024)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise f.bad("target_modules", "must list module names")
    return f.obj


def trained_manifest(adapter_dir: Path) -> dict | None:
    """edgeq finetune's manifest beside the adapter (None for an adapter from elsewhere), with the fields merge reads
    checked: the base it was trained on and the 4-bit storage it saw."""
    path = adapter_dir / FINETUNE_MANIFEST
    if not path.exists():
        return None
    f = Fields(read_json(path, FINETUNE_MANIFEST, _ADAPTER_FIX, 4 << 20), str(path), _ADAPTER_FIX, FINETUNE_MANIFEST)
    f.text("inputs.base_sha256")
    f.text("inputs.base")
    if f.text("quantization.quant") not in (*QUANT_MODES, UNQUANTIZED):
        raise f.bad("quantization.quant", f"must be one of {', '.join((*QUANT_MODES, UNQUANTIZED))}")
    if not isinstance(f.get("quantization.double_quant"), bool):
        raise f.bad("quantization.double_quant", "must be true or false")
    return f.obj


def round_trip(weight, quant: str, double_quant: bool):
    """The weight as the frozen base saw it during training: quantize to 4 bits, dequantize to fp32."""
    # deferred: the workstation toolchain, absent from the runtime-only install
    from bitsandbytes import functional as F

    q, state = F.quantize_4bit(
        weight.data.float().contiguous(), blocksize=NF4_BLOCKSIZE, compress_statistics=double_quant, quant_type=quant
    )
    return F.dequantize_4bit(q, state).to(weight.dtype)  # fp32 in, exact in fp64 out


def check_adapter_fits(model, adapter_dir: Path, base_dir: Path) -> None:
    """Every adapter tensor must land on a module of this base with the right shape, and vice versa."""
    from safetensors import safe_open  # deferred: the workstation toolchain, absent from the runtime-only install

    cfg = adapter_config(adapter_dir)
    targets = set(cfg["target_modules"])
    r = cfg["r"]
    expected = {}
    for name, mod in model.named_modules():
        if name.split(".")[-1] in targets and hasattr(mod, "in_features"):
            expected[f"base_model.model.{name}.lora_A.weight"] = (r, mod.in_features)
            expected[f"base_model.model.{name}.lora_B.weight"] = (mod.out_features, r)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise UsageError(
            "adapter has no adapter_model.safetensors",
            str(adapter_dir),
            "re-save the adapter with safetensors (pickle adapters are refused)",
        )
    with safe_open(str(weights), "pt") as f:
        found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(f"{k} {found[k]} ≠ {expected[k]}" for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or unexpected or wrong:
        groups = (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        detail = "; ".join(f"{label} {len(keys)} (e.g. {keys[0]})" for label, keys in groups if keys)
        raise UsageError(
            f"adapter does not fit this base ({detail})",
            str(adapter_dir),
            f"merge it into the base it was trained on, not {base_dir}",
        )


def write_template(model_dir: Path, template: str) -> None:
    """The chat template as chat_template.jinja, the one place transformers, the GGUF writer and ONNX Runtime
    GenAI read it from; a copy inside tokenizer_config.json would shadow it for some readers, so it goes."""
    write_text(model_dir / "chat_template.jinja", template)
    cfg_path = model_dir / "tokenizer_config.json"
    if cfg_path.is_file():
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
        if config.pop("chat_template", None) is not None:
            write_json(cfg_path, config)


@dataclass(frozen=True)
class Provenance:
    """What is merged into what, established before any weights are loaded."""

    out: Path
    adapter_dir: Path
    base_dir: Path
    base_sha: str
    quant: dict  # the frozen base's quantization during training (none for plain LoRA)
    policy: str  # the merge target actually used: dequantized or pristine


def provenance(cfg: MergeConfig) -> Provenance:
    """Options checked, the output replaceable, the adapter trained on this base, the policy settled."""

    cfg.check()
    out = claim_output(cfg.out, [cfg.adapter, cfg.base], cfg.force)  # refused before the work, not after it
    adapter_dir = find_adapter(cfg.adapter)
    base_dir = resolve_model(cfg.base)
    claim_output(out, [adapter_dir, base_dir], cfg.force)
    trained = trained_manifest(adapter_dir)
    base_sha = base_fingerprint(base_dir)
    if trained and trained["inputs"]["base_sha256"] != base_sha:
        raise UsageError(
            f"adapter was trained on another base (base sha256 {trained['inputs']['base_sha256'][:12]}…, "
            f"adapter's base {trained['inputs']['base']}; this base {base_sha[:12]}… at {base_dir})",
            str(adapter_dir),
            "pass --base with the model the adapter was trained on",
        )
    quant = trained["quantization"] if trained else {"quant": UNQUANTIZED, "double_quant": False}
    policy = cfg.merge_into
    if policy == "dequantized" and quant["quant"] == UNQUANTIZED:
        policy = "pristine"  # trained on an un-quantized base: the two policies are the same weights
        report.err.print("note: the adapter was trained on an un-quantized base; merging into the pristine weights")
    check_free_disk(out.parent, 3 * weights_bytes(base_dir), "the merged model")
    return Provenance(out, adapter_dir, base_dir, base_sha, quant, policy)


def load_base(p: Provenance):
    """The base in float64; with the dequantized policy its adapted linears go through the same 4-bit
    round trip training saw, so the adapter lands on the weights it was trained against."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(p.base_dir, dtype=torch.float64)
    check_adapter_fits(model, p.adapter_dir, p.base_dir)
    targets = set(adapter_config(p.adapter_dir)["target_modules"])
    if p.policy == "dequantized":
        with torch.no_grad():
            for name, mod in model.named_modules():
                if name.split(".")[-1] in targets and hasattr(mod, "in_features"):
                    mod.weight.copy_(round_trip(mod.weight, p.quant["quant"], p.quant["double_quant"]))
    return model


def merge_verified(model, tok, adapter_dir: Path):
    """Merge the adapter and prove it in float64: merged logits == base + adapter (unmerged) within
    MERGE_TOLERANCE, the adapter changes the base at all, no NaN/Inf. Returns (merged model, numbers)."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from peft import PeftModel

    batch = tok(list(VERIFY_TEXTS), return_tensors="pt", padding=True, add_special_tokens=False)
    peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False).eval()
    peft_model.to(torch.float64)  # the adapter loads as float32; the check runs wholly in float64
    with torch.no_grad():
        with peft_model.disable_adapter():
            base_logits = peft_model(**batch).logits
        unmerged = peft_model(**batch).logits
        merged_model = peft_model.merge_and_unload().eval()
        merged = merged_model(**batch).logits
    keep = batch["attention_mask"].bool()
    max_abs = float((merged - unmerged).abs()[keep].max())
    effect = float((unmerged - base_logits).abs()[keep].max())
    bad = [n for n, p in merged_model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise EdgeqError(
            f"merged weights contain NaN/Inf ({len(bad)} tensors, e.g. {bad[0]})",
            str(adapter_dir),
            "the adapter is corrupt or diverged: check the fine-tune's loss curve",
        )
    if not effect > MERGE_TOLERANCE:  # the check below passes on a no-op: refuse it here
        raise UsageError(
            f"the adapter changes nothing (max |Δlogit| vs the base {effect:.2e})",
            str(adapter_dir),
            "its LoRA weights are zero or untrained: check that the fine-tune ran and saved",
        )
    if not max_abs <= MERGE_TOLERANCE:
        raise EdgeqError(
            f"merged logits differ from base + adapter by {max_abs:.2e} (tolerance {MERGE_TOLERANCE:g})",
            str(adapter_dir),
            "report this: the merge is not exact",
        )
    return merged_model, MergeCheck(max_abs, MERGE_TOLERANCE, effect, "float64", len(VERIFY_TEXTS))


def merge(cfg: MergeConfig) -> MergeResult:
    """provenance → load the base (round trip) → merge and verify → write the HF folder atomically."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install

    p = provenance(cfg)
    tok = load_tokenizer(p.base_dir)
    template = embed(tok.chat_template, cfg.system_prompt, tok) if cfg.system_prompt else None  # refused before work
    if tok.pad_token is None:  # Llama-3 has none; the check's padded positions are masked out (this copy only pads)
        tok.pad_token = tok.eos_token
    merged_model, verification = merge_verified(load_base(p), tok, p.adapter_dir)
    merged_model.to(getattr(torch, cfg.dtype))
    result = MergeResult(str(p.out), cfg.dtype, p.policy, cfg.merge_into, p.quant, cfg.system_prompt, verification)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "edgeq_version": __version__,
        "stage": "merge",
        "inputs": {
            "base": str(p.base_dir),
            "base_sha256": p.base_sha,
            "adapter": str(p.adapter_dir),
            "adapter_sha256": sha256_file(p.adapter_dir / "adapter_model.safetensors"),
        },
        "config": result.config(),
        "verification": asdict(verification),
        "versions": versions(),
    }
    with atomic_dir(p.out, force=cfg.force, protect=[p.adapter_dir, p.base_dir]) as tmp:
        merged_model.config.dtype = cfg.dtype
        merged_model.save_pretrained(tmp, safe_serialization=True)
        for name in TOKENIZER_FILES:
            if (p.base_dir / name).is_file():
                shutil.copyfile(p.base_dir / name, tmp / name)
        if template is not None:
            write_template(tmp, template)
        write_json(tmp / MERGE_MANIFEST, manifest)
    return result


def adopt(model_dir: Path, out: Path, system_prompt: str | None) -> MergeResult:
    """A full fine-tune's model (edgeq finetune --method full wrote it, weights in fp32) where a merged one is due:
    nothing to fold in, so its files are copied as they are, the chat template given the default system prompt the
    way merge gives it. The build's merge stage for --method full."""
    trained = read_json(model_dir / FINETUNE_MANIFEST, FINETUNE_MANIFEST, "run the fine-tune again", 4 << 20)
    tok = load_tokenizer(model_dir)
    template = embed(tok.chat_template, system_prompt, tok) if system_prompt else None
    with atomic_dir(out, force=True, protect=[model_dir]) as tmp:
        for f in sorted(model_dir.iterdir()):
            if f.is_file() and f.name != FINETUNE_MANIFEST:
                shutil.copyfile(f, tmp / f.name)
        if template is not None:
            write_template(tmp, template)
    quant = trained.get("quantization") or {"quant": UNQUANTIZED}
    return MergeResult(str(out), "float32", "none", "none", quant, system_prompt, None)


def merge_table(r: MergeResult):
    """The merge at a glance (the CLI prints it)."""

    v = r.verification
    rows = [
        ["policy", r.merge_into],
        ["dtype", r.dtype],
        ["max |Δlogit| vs unmerged", f"{v.max_abs_logit_diff:.2e} (≤ {v.tolerance:g})"],
        ["adapter's effect (max |Δlogit| vs base)", f"{v.adapter_effect_max_abs_logit:.3g}"],
        ["output", r.path],
    ]
    return report.table("merge", ["", ""], rows)

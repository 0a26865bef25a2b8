"""Which llama.cpp configuration works on this machine, decided by a real quantized decode.

llama-cpp-python 0.3.36 on Intel Xeon CPUs with AMX segfaults on the first decode of every
quantized GGUF of a model with tied embeddings (the default model's shape): its AMX "extra"
buffer type repacks token_embd.weight (llama.cpp issue #19184 shows the same pattern). Loading
with `use_extra_bufts = False` works everywhere, but costs the CPU repacking that speeds up
Q4_0/Q4_K decode on x86 and ARM, so it is not the default everywhere: a probe decides.

The probe quantizes a tiny random-weight llama GGUF (tied embedding, written here with gguf-py)
to Q8_0 and Q4_K_M and decodes a few tokens in a child process, first with llama.cpp's default
configuration, then, if that child dies, with extra buffer types off. The decision is cached per
machine (CPU model and flags), llama-cpp-python version and edgeq version. `decide()` is a pure
function of the probe results, so it is tested with injected crashes on any CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeq import __version__, child, report
from edgeq.basemodel import cache_root
from edgeq.errors import BackendError, UsageError
from edgeq.io import file_lock, write_json
from edgeq.machine import package_version, platform_info
from edgeq.spec import ENV_LLAMA_EXTRA_BUFTS, QUANT_TYPES

PROBE_TYPES = ("Q8_0", "Q4_K_M")
PROBE_DIMS = {"hidden": 256, "layers": 1, "heads": 4, "kv_heads": 2, "ffn": 512, "vocab": 512}  # K-quants need 256


@dataclass(frozen=True)
class LlamaConfig:
    """How edgeq loads every GGUF in llama.cpp on this machine (recorded in bench JSON and manifests)."""

    extra_buffer_types: bool  # llama.cpp's CPU repack / AMX buffer types (its default: on)
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def tiny_gguf(path: Path, vocab: str = "bpe", seed: int = 0, dims: dict | None = None, ftype: str = "F32") -> Path:
    """A random-weight llama GGUF (tied embedding; matrices F32 or F16, norms F32) with a byte-level BPE
    vocabulary. vocab="spm-no-bytes" writes a sentencepiece vocabulary without byte tokens, which llama.cpp
    accepts at load and aborts on when it meets a newline (a malformed export seen in the wild). `dims`
    overrides PROBE_DIMS (calibrate.py writes the default model's shape)."""
    from gguf import GGUFWriter  # deferred: gguf-py's import costs the CLI's start-up

    d = {**PROBE_DIMS, **(dims or {})}
    h, head_dim = d["hidden"], d["hidden"] // d["heads"]
    rng = np.random.default_rng(seed)
    dtype = {"F32": np.float32, "F16": np.float16}[ftype]

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype)

    g = GGUFWriter(str(path), "llama")
    g.add_name("edgeq-probe")
    g.add_context_length(d.get("positions", 2048))
    g.add_embedding_length(h)
    g.add_block_count(d["layers"])
    g.add_feed_forward_length(d["ffn"])
    g.add_head_count(d["heads"])
    g.add_head_count_kv(d["kv_heads"])
    g.add_rope_dimension_count(head_dim)
    g.add_layer_norm_rms_eps(1e-5)
    g.add_file_type(QUANT_TYPES[ftype].ftype)
    tokens = [f"<t{i}>" for i in range(d["vocab"])]
    if vocab == "bpe":
        tokens[: 256 - 33] = [chr(c) for c in range(33, 256)]  # printable bytes; enough for ids-only decoding
        tokens[300] = "ab"
        g.add_tokenizer_model("gpt2")
        g.add_tokenizer_pre("default")
        g.add_token_merges(["a b"])  # llama.cpp refuses a BPE vocabulary without merges
    elif vocab == "spm-no-bytes":
        g.add_tokenizer_model("llama")
        g.add_token_scores([0.0] * d["vocab"])
    else:
        raise ValueError(vocab)
    g.add_token_list(tokens)
    g.add_token_types([1] * d["vocab"])
    g.add_bos_token_id(1)
    g.add_eos_token_id(2)
    g.add_tensor("token_embd.weight", w(d["vocab"], h))
    g.add_tensor("output_norm.weight", np.ones(h, dtype=np.float32))
    for i in range(d["layers"]):
        kv = d["kv_heads"] * head_dim
        for name, shape in (
            ("attn_norm", (h,)),
            ("ffn_norm", (h,)),
            ("attn_q", (h, h)),
            ("attn_k", (kv, h)),
            ("attn_v", (kv, h)),
            ("attn_output", (h, h)),
            ("ffn_gate", (d["ffn"], h)),
            ("ffn_up", (d["ffn"], h)),
            ("ffn_down", (h, d["ffn"])),
        ):
            g.add_tensor(f"blk.{i}.{name}.weight", np.ones(shape, dtype=np.float32) if len(shape) == 1 else w(*shape))
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
    return path


def llama_setup(cfg: dict) -> tuple[str, dict]:
    """The child job that configures llama.cpp with `cfg` (LlamaConfig.as_dict()) before an op runs."""
    return ("edgeq.runtime:configure_llama", {"cfg": cfg})


def probe(extra_buffer_types: bool, types=PROBE_TYPES) -> dict:
    """Decode the probe model in a child with this configuration: {"ok": True} or, where the child crashed,
    {"ok": False, "signal": name, "error": line}. Any other failure is raised: it is not this CPU's verdict."""

    with tempfile.TemporaryDirectory(prefix="edgeq-probe-") as work:
        try:
            child.call(
                "edgeq.runtime:decode_probe_here",
                f"the llama.cpp probe (quantized decode, extra buffer types {'on' if extra_buffer_types else 'off'})",
                "llama.cpp",
                work=Path(work),
                types=list(types),
                setup=llama_setup({"extra_buffer_types": extra_buffer_types}),
            )
        except child.CrashError as e:
            return {"ok": False, "signal": e.signal_name, "error": e.what}
    return {"ok": True}


def decide(default: dict, fallback: dict | None) -> LlamaConfig:
    """The configuration from the probe results: llama.cpp's default where it decodes, else extra buffer types
    off where that decodes; neither → BackendError."""
    if default["ok"]:
        return LlamaConfig(True, "llama.cpp's default configuration decodes quantized models on this CPU")
    if fallback is not None and fallback["ok"]:
        return LlamaConfig(
            False,
            f"llama.cpp's default configuration crashed ({default['signal']}) on a quantized decode on this CPU; "
            "extra buffer types (CPU repack, AMX) are off",
        )
    raise BackendError(
        "llama.cpp cannot decode quantized models on this machine, with or without extra buffer types "
        f"({(fallback or default)['error']})",
        None,
        "reinstall llama-cpp-python for this CPU (pip install --force-reinstall --no-binary llama-cpp-python)",
    )


def machine_key() -> str:

    plat = platform_info()
    ident = [plat["cpu"], platform.machine(), sorted(plat["cpu_features"]), package_version("llama_cpp"), __version__]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


def _cached_decision(path: Path) -> LlamaConfig | None:
    """The probe's recorded decision; None when absent, cut short or not a decision (then the probe runs again)."""
    try:
        d = json.loads(path.read_bytes())
        shape_ok = isinstance(d, dict) and set(d) == {"extra_buffer_types", "reason"}
        if shape_ok and isinstance(d["extra_buffer_types"], bool) and isinstance(d["reason"], str):
            return LlamaConfig(**d)
    except (OSError, ValueError, RecursionError):
        pass
    return None


def llama_config() -> LlamaConfig:
    """This machine's configuration: forced by $EDGEQ_LLAMA_EXTRA_BUFTS, else the cached probe decision."""
    forced = os.environ.get(ENV_LLAMA_EXTRA_BUFTS)
    if forced is not None:
        if forced not in ("0", "1"):
            raise UsageError(f"{ENV_LLAMA_EXTRA_BUFTS}={forced!r}: expected 0 or 1", None, "unset it; edgeq probes")
        return LlamaConfig(forced == "1", f"set by {ENV_LLAMA_EXTRA_BUFTS}={forced}")

    path = cache_root() / "runtime" / f"llama-{machine_key()}.json"
    if (known := _cached_decision(path)) is not None:
        return known
    with file_lock(path.with_suffix(".lock")):
        if (known := _cached_decision(path)) is not None:  # another process probed while we waited
            return known
        default = probe(True)
        cfg = decide(default, None if default["ok"] else probe(False))
        if not cfg.extra_buffer_types:
            report.err.print(f"[yellow]note:[/] {cfg.reason}")
        write_json(path, cfg.as_dict())
    return cfg

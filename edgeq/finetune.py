"""`edgeq finetune`: QLoRA — base frozen in 4-bit NormalFloat (double-quantized), LoRA adapters on top — or, by
--method, LoRA on a 16-bit base, or a full fine-tune of every weight.

The recipe, top to bottom:
  1. validate the config (all problems at once), read and tokenize the data (nothing written on error)
  2. load the base: quantized by bitsandbytes (NF4/FP4, double quant: qlora), in 16 bits (lora), in fp32 (full)
  3. qlora, lora: wrap the target linears with peft LoRA (W' = W_frozen + B·A · alpha/r); only A and B train.
     full: every weight trains
  4. train: gradient checkpointing, loss over assistant tokens only, computed in chunks so the
     (tokens × 49k vocab) logits are never materialized; AdamW (paged 8-bit AdamW on CUDA)
  5. checkpoint atomically (temp dir → rename → COMPLETE marker); resume from the newest complete one
  6. write the adapter (full: the whole model) and a manifest; print a summary
Runs unchanged under torchrun / accelerate launch: gradients of the trained parameters are all-reduced.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import math
import os
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from edgeq import __version__, report
from edgeq.basemodel import MODEL_HELP, base_fingerprint, load_tokenizer, resolve_model, weights_bytes
from edgeq.config import problems, setting
from edgeq.data import IGNORE, load_dataset
from edgeq.errors import ConfigError, EdgeqError, UsageError
from edgeq.footprint import Dims
from edgeq.io import (
    OUTPUT_MARK,
    atomic_dir,
    check_free_disk,
    check_not_input,
    read_json,
    remove_output,
    sha256_file,
    write_json,
)
from edgeq.machine import platform_info, versions
from edgeq.records import FinetuneResult
from edgeq.spec import (
    FINETUNE_LR,
    FINETUNE_MANIFEST,
    FINETUNE_METHODS,
    FINETUNE_STRUCTURAL,
    LORA_ALL_LINEAR,
    MANIFEST_SCHEMA,
    NF4_BLOCKSIZE,
    QUANT_MODES,
    TOKENIZER_FILES,
    UNQUANTIZED,
)
from edgeq.trainplan import (
    CALIBRATION,
    GPU_METHODS,
    MIB,
    FinetunePrediction,
    activation_bytes,
    checkpoint_bytes,
    predict_finetune,
    predict_gpu,
)

CKPT_DIR, CKPT_MARKER, ADAPTER_DIR, MODEL_DIR = "checkpoints", "COMPLETE", "adapter", "model"
LR_HELP = (
    "peak learning rate (linear warm-up, cosine decay) [default: "
    + ", ".join(f"{lr:g} for {m}" for m, lr in FINETUNE_LR.items())
    + "]"
)
METHOD_HELP = (
    "what trains: qlora = LoRA adapters on a base frozen in 4 bits; lora = LoRA adapters on a base frozen in 16 bits "
    "(bf16 where the hardware multiplies it natively, else fp32); full = every weight (fp32, AdamW; writes a whole "
    "model, nothing to merge)"
)


@dataclass
class FinetuneConfig:
    data: str = setting(help="training JSONL: messages or prompt/response per line")
    out: str = setting(help="output directory (adapter, checkpoints, manifest)")
    base: str | None = setting(None, MODEL_HELP)
    method: str = setting(FINETUNE_METHODS[0], METHOD_HELP, choices=FINETUNE_METHODS)
    quant: str = setting("nf4", "the 4-bit type of the frozen base (--method qlora)", choices=QUANT_MODES)
    double_quant: bool = setting(
        True, "quantize the quantization constants too (QLoRA's double quantization; --method qlora)"
    )
    lora_r: int = setting(16, "LoRA rank", minimum=1, maximum=1 << 12)
    lora_alpha: int = setting(32, "LoRA scale numerator (scale = alpha / r)", minimum=1, maximum=1 << 16)
    lora_dropout: float = setting(0.0, "dropout on the LoRA input", minimum=0, maximum=0.99)
    target_modules: tuple[str, ...] = setting(
        (LORA_ALL_LINEAR,),
        f"comma-separated linear layers to adapt; every one the model has must be named [default: {LORA_ALL_LINEAR}: "
        "all of them, fused projections included]",
        listed=True,
    )
    lr: float | None = setting(None, LR_HELP)
    epochs: float = setting(1.0, "passes over the training split")
    max_steps: int | None = setting(
        None, "stop after N optimizer steps (overrides --epochs)", minimum=1, maximum=1 << 30
    )
    batch_size: int = setting(8, "examples per micro-batch per process", minimum=1, maximum=1 << 12)
    grad_accum: int = setting(1, "micro-batches per optimizer step", minimum=1, maximum=1 << 12)
    seq_len: int = setting(256, "longest example in tokens", minimum=8, maximum=1 << 20)
    seed: int = setting(0, "seed for data order, init and dropout")
    eval_split: float = setting(0.05, "fraction of the data held out for the eval loss")
    save_every: int = setting(25, "checkpoint every N optimizer steps", minimum=1, maximum=1 << 30)
    strict: bool = setting(False, "reject examples longer than --seq-len instead of truncating them")
    resume: bool = setting(False, "continue from the newest complete checkpoint in --out")
    force: bool = setting(False, "replace an existing adapter (or model) in --out")
    optim_bits: int = setting(8, "paged AdamW state precision on CUDA", choices=(8, 32))
    gradient_checkpointing: bool | None = setting(
        None,
        "recompute activations in backward [default: on CUDA; on a CPU only where the activations would take more "
        "than a quarter of the available memory]",
    )
    loss_chunk: int = setting(128, "tokens per cross-entropy chunk", minimum=1, maximum=1 << 20, flag="")
    dry_run: bool = setting(
        False,
        "print the predicted peak memory and what fits --train-memory-mib; train and write nothing (the base may be "
        "a folder with only its config.json and tokenizer)",
    )
    train_memory_mib: int | None = setting(
        None,
        "memory the fine-tune may use (MiB): above it checkpointing turns on and micro-batches split, the same "
        "examples per step [default: what this machine has available]",
        minimum=64,
        maximum=1 << 30,
    )

    @property
    def adapters(self) -> bool:
        """LoRA adapters train on a frozen base (qlora, lora); full trains the base itself."""
        return self.method != "full"

    @property
    def quantized(self) -> bool:
        return self.method == "qlora"

    @property
    def output_dir(self) -> str:
        """What the run leaves in --out: the adapter, or for a full fine-tune the whole model."""
        return ADAPTER_DIR if self.adapters else MODEL_DIR

    def check(self) -> None:
        """Report every invalid setting at once: the fields' own bounds, then the open intervals."""
        p = problems(self)
        if self.lr is not None and not 0 < self.lr < 1:  # also refuses nan
            p.append(f"--lr {self.lr}: must be in (0, 1)")
        if not 0 < self.epochs <= 1000:
            p.append(f"--epochs {self.epochs}: must be in (0, 1000]")
        if not 0 <= self.eval_split < 0.5:
            p.append(f"--eval-split {self.eval_split}: must be in [0, 0.5)")
        if not self.target_modules:
            p.append("--target-modules: name at least one linear layer")
        if p:
            raise ConfigError(p, "finetune options")


# ---------------------------------------------------------------------------------------------
# distributed helpers (torchrun / accelerate launch set these variables)


def _dist_init():
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return rank, world


def _all_reduce_sum(tensors, world: int) -> None:
    import torch.distributed as dist  # deferred: the workstation toolchain, absent from the runtime-only install

    if world > 1:
        for t in tensors:
            dist.all_reduce(t)


# ---------------------------------------------------------------------------------------------
# memory


def release_freed_memory(model, every: int = 3) -> bool:
    """Return freed heap pages to the OS every `every` decoder layers (glibc malloc_trim).

    On CPU every 4-bit matmul dequantizes its weight into a fresh buffer, and activations of
    similar sizes come and go around them: glibc keeps the freed pages, the heap fragments, and
    RSS climbs far above what is live. Measured here (batch 8 x seq 128): a forward grew RSS by
    970 MiB with the default policy, 74 MiB with every buffer mmap-ed (but steps took 2x longer);
    a malloc_trim(0) before every third decoder layer keeps most of the saving for little time
    (benchmarks/qlora_cpu_memory.py). Returns False where there is no glibc (macOS, musl): nothing to do there.
    """

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    for i, layer in enumerate(model.model.layers):  # the HF decoder stack, before peft wraps it
        if i % every == 0:
            layer.register_forward_pre_hook(lambda module, args: trim(0) and None)  # also runs on recompute
    return True


def cpu_has_bf16() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16 / AMX on x86, BF16 on Arm)."""

    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(platform_info()["cpu_features"]))


def own_weights(model) -> None:
    """Copy weights that still point into the mmap-ed safetensors file, so the file can be unmapped.

    transformers keeps un-quantized tensors (the tied embedding, norms) as views of the mapped file;
    every page read while quantizing stays resident (~530 MiB for the default model) until then.
    """

    for p in model.parameters():
        if p.dtype.is_floating_point:
            p.data = p.data.clone()
    gc.collect()


# ---------------------------------------------------------------------------------------------
# model


def checkpointing(cfg: FinetuneConfig, model_config, longest: int, device: str) -> bool:
    """Whether to recompute activations in backward. On CUDA memory binds (the QLoRA recipe keeps it on); on a
    CPU compute binds and recomputing costs a sixth of every step (benchmarks/RESULTS.md), so it is off
    unless the kept activations of the longest batch would crowd the available memory."""
    if cfg.gradient_checkpointing is not None:
        return cfg.gradient_checkpointing
    if device == "cuda":
        return True
    tokens, layers, hidden = cfg.batch_size * longest, model_config.num_hidden_layers, model_config.hidden_size
    need = activation_bytes(tokens, layers, hidden, False, CALIBRATION)  # measured: benchmarks/finetune_plan.py
    return need > available_mib() * MIB / 4


def checkpoint_size(base_dir: Path) -> int:
    """Bytes loading reads: the safetensors files, or for a folder with only its config the parameters at the
    config's dtype."""
    on_disk = weights_bytes(base_dir)
    if on_disk:
        return on_disk
    cfg = read_json(base_dir / "config.json", "config.json", "fix the model's config.json", 4 << 20)
    width = 4 if str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32") == "float32" else 2
    return checkpoint_bytes(Dims.from_config(base_dir)) // 4 * width


def available_mib() -> float:
    import psutil

    return psutil.virtual_memory().available / MIB


def fit_memory(
    cfg: FinetuneConfig, base_dir: Path, longest: int, device: str, strict: bool = True
) -> tuple[FinetuneConfig, str | None]:
    """cfg with checkpointing decided and, where the predicted peak (trainplan.py) exceeds --train-memory-mib
    (default: what is available now), checkpointing on and the micro-batch split (the same examples per step,
    in more micro-batches); with what was chosen and why. Where even one example per micro-batch does not fit:
    UsageError, or with strict=False that setting and the reason. On CUDA the prediction is of host RAM only, so
    only checkpointing is decided there."""
    from transformers import AutoConfig  # deferred: the workstation toolchain, absent from the runtime-only install

    asked = cfg
    on = checkpointing(cfg, AutoConfig.from_pretrained(base_dir), longest, device)
    cfg = replace(cfg, gradient_checkpointing=on)
    if device == "cuda":
        return cfg, None
    limit = cfg.train_memory_mib or available_mib()
    d, files, width = Dims.from_config(base_dir), checkpoint_size(base_dir), dtype_bytes(compute_dtype(device))

    def predict(c: FinetuneConfig):
        tokens = c.batch_size * longest
        return predict_finetune(d, CALIBRATION, tokens, c.lora_r, c.gradient_checkpointing, files, 1, c.method, width)

    def peak(c: FinetuneConfig) -> float:
        return predict(c).peak_mib

    need, loading = peak(cfg), predict(cfg).load_mib
    if need <= limit:
        return cfg, None
    # loading the base does not depend on the batch: only the training moment is worth a change of setting
    if loading <= limit:
        if asked.gradient_checkpointing is None:
            cfg = replace(cfg, gradient_checkpointing=True)  # before any split: a sixth of a step, a split more
        # micro-batches of a divisor of the batch, the largest that fits: every step still sees the examples it would
        for b in sorted((b for b in range(1, asked.batch_size) if asked.batch_size % b == 0), reverse=True):
            if peak(cfg) <= limit:
                break
            cfg = replace(cfg, batch_size=b, grad_accum=asked.grad_accum * asked.batch_size // b)
    if peak(cfg) > limit:
        what = (
            f"loading the base needs about {loading:.0f} MiB"
            if loading > limit
            else f"the fine-tune needs about {peak(cfg):.0f} MiB at {cfg.batch_size} example(s) per micro-batch "
            f"with checkpointing {'on' if cfg.gradient_checkpointing else 'off'}"
        ) + f"; the limit is {limit:.0f} MiB"
        if not strict:
            return cfg, f"does not fit: {what}"
        raise UsageError(
            what,
            "--train-memory-mib" if asked.train_memory_mib else "this machine's available memory",
            "use a smaller base, a shorter --seq-len, or a machine with more memory",
        )
    chosen = f"checkpointing {'on' if cfg.gradient_checkpointing else 'off'}"
    if cfg.batch_size != asked.batch_size:
        chosen += (
            f", micro-batches of {cfg.batch_size} × {cfg.grad_accum} (asked {asked.batch_size} × {asked.grad_accum})"
        )
    return cfg, f"{chosen}: {need:.0f} MiB predicted as asked, over the {limit:.0f} MiB limit; now {peak(cfg):.0f} MiB"


def compute_dtype(device: str) -> str:
    """The 16-bit type where the hardware multiplies it natively, else fp32: the 4-bit base's compute type, and
    the frozen base's storage for --method lora. On a CPU without native bf16 it is slower than fp32."""
    return "bfloat16" if device == "cuda" or cpu_has_bf16() else "float32"


def weights_dtype(cfg: FinetuneConfig, device: str) -> str:
    """The type the base's weights load in: fp32 for a full fine-tune (AdamW updates of a 16-bit weight round
    away), the compute type for a 16-bit LoRA base; QLoRA's non-quantized weights (embedding, norms) stay fp32."""
    return compute_dtype(device) if cfg.method == "lora" else "float32"


def dtype_bytes(dtype: str) -> int:
    return {"bfloat16": 2, "float32": 4}[dtype]


def load_model(base_dir: Path, cfg: FinetuneConfig, device: str):
    """The base, loaded as cfg.method trains it: frozen in 4 bits (qlora) or in weights_dtype (lora) with LoRA
    adapters attached, which stay fp32 (peft's autocast_adapter_dtype) whatever the base's type; or whole in fp32
    with every weight trainable (full)."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": getattr(torch, weights_dtype(cfg, device))}
    if cfg.quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.quant,
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, compute_dtype(device)),  # bf16 halves each dequantized weight
        )
        kwargs["device_map"] = {"": 0 if device == "cuda" else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    if not cfg.quantized:
        model.to(device)
    if device == "cpu":
        own_weights(model)
        release_freed_memory(model)
    for p in model.parameters():
        p.requires_grad_(not cfg.adapters)
    if not cfg.adapters:
        _checkpoint_activations(model, cfg)
        return model
    # No prepare_model_for_kbit_training: it up-casts every non-quantized weight (the 28M-param tied
    # embedding included) to fp32 copies we do not need; the base stays frozen as loaded.
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora, autocast_adapter_dtype=True)
    wrapped = wrapped_modules(model)["names"]
    if set(wrapped) != set(cfg.target_modules):  # lora_targets checked the names: a miss here is a defect
        raise EdgeqError(f"LoRA wrapped {', '.join(wrapped)} of {', '.join(cfg.target_modules)}", str(base_dir))
    _checkpoint_activations(causal_lm(model), cfg)
    return model


def _checkpoint_activations(inner, cfg: FinetuneConfig) -> None:
    if cfg.gradient_checkpointing:
        # transformers 5.x renamed gradient_checkpointing_enable; support both names in our range
        if hasattr(inner, "activation_checkpointing_enable"):
            inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def causal_lm(model):
    """The Hugging Face model (LlamaForCausalLM-like: .model, the decoder, and .lm_head) under peft's wrapper, or
    the model itself for a full fine-tune."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def chunked_loss(hidden, labels, lm_weight, chunk: int):
    """Summed next-token cross-entropy over labelled positions and their count, logits computed
    `chunk` rows at a time. The caller divides: by the whole global batch's count when training.

    hidden: (B, T, H) last hidden states; labels: (B, T) with IGNORE where no loss is taken.
    Only labelled positions reach the (H × vocab) projection, and each chunk's logits are
    recomputed in backward instead of kept, so peak memory holds one (chunk × vocab) block.
    """
    import torch.nn.functional as F  # deferred: the workstation toolchain, absent from the runtime-only install
    from torch.utils.checkpoint import checkpoint

    targets = labels[:, 1:]  # (B, T-1): token t predicts t+1
    keep = targets != IGNORE
    h = hidden[:, :-1][keep]  # (N, H)
    y = targets[keep]  # (N,)
    total = hidden.new_zeros(())

    def piece(h_part, y_part):
        logits = h_part @ lm_weight.T  # (n, vocab): lives only here
        return F.cross_entropy(logits.float() if logits.element_size() < 4 else logits, y_part, reduction="sum")

    for i in range(0, h.shape[0], chunk):
        total = total + checkpoint(piece, h[i : i + chunk], y[i : i + chunk], use_reentrant=False)
    return total, int(y.numel())


def forward_loss(model, batch, chunk: int):
    """Decoder forward without the LM head, then the chunked loss against the head (frozen, or trained by a full
    fine-tune, tied or not)."""
    inner = causal_lm(model)
    out = inner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return chunked_loss(out.last_hidden_state, batch["labels"], inner.lm_head.weight, chunk)


def labelled_tokens(batch) -> int:

    return int((batch["labels"][:, 1:] != IGNORE).sum())  # the positions chunked_loss takes a loss at


def train_step(model, optim, micro_batches: list[dict], cfg: FinetuneConfig, world: int) -> float:
    """One optimizer step; returns its loss.

    The loss is the token mean over the whole global batch (every micro-batch on every rank), so
    gradient accumulation and DDP produce the gradient one process would on the same examples.
    """
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install

    trainable = [p for p in model.parameters() if p.requires_grad]
    tokens = torch.tensor(float(sum(labelled_tokens(mb) for mb in micro_batches)))
    _all_reduce_sum([tokens], world)
    scale = 1.0 / max(float(tokens), 1.0)
    step_loss = torch.zeros(())
    for mb in micro_batches:
        loss_sum, _ = forward_loss(model, mb, cfg.loss_chunk)
        (loss_sum * scale).backward()
        step_loss += loss_sum.detach().float().cpu() * scale
    _all_reduce_sum([p.grad for p in trainable if p.grad is not None] + [step_loss], world)
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optim.step()
    optim.zero_grad(set_to_none=True)
    return float(step_loss)


def collate(examples, pad_id: int, device: str):
    """Pad a list of Examples to the longest one: (B, T) tensors."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def quantized_bits_per_param(model) -> dict:
    """Storage of the frozen 4-bit linears, constants included: bits per parameter (QLoRA paper: 4.127 with DQ)."""
    import bitsandbytes as bnb  # deferred: the workstation toolchain, absent from the runtime-only install

    params = bits = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            w, qs = m.weight, m.weight.quant_state
            params += qs.shape.numel()
            bits += w.numel() * w.element_size() * 8
            bits += qs.absmax.numel() * qs.absmax.element_size() * 8
            if qs.nested and qs.state2 is not None:
                bits += qs.state2.absmax.numel() * qs.state2.absmax.element_size() * 8
                bits += 32  # the fp32 offset subtracted before quantizing the constants
    return {"quantized_params": params, "bits_per_param": bits / params if params else None}


# ---------------------------------------------------------------------------------------------
# checkpoints


def _trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def save_checkpoint(out: Path, step: int, model, optim, state: dict) -> Path:
    """Adapter weights, optimizer moments, RNG state and loss history; a COMPLETE marker after the rename."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from safetensors.torch import save_file

    final = out / CKPT_DIR / f"step-{step:06d}"
    if not (out / CKPT_DIR / OUTPUT_MARK).is_file():  # the folder is edgeq's: --force may remove it later
        (out / CKPT_DIR).mkdir(parents=True, exist_ok=True)
        (out / CKPT_DIR / OUTPUT_MARK).write_text("written by edgeq finetune\n")
    with atomic_dir(final, force=True) as tmp:
        names = {id(p): n for n, p in _trainable(model)}
        tensors = {f"param/{n}": p.detach().contiguous() for n, p in _trainable(model)}
        for p, s in optim.state.items():
            for k, v in s.items():
                if torch.is_tensor(v):
                    tensors[f"optim/{names[id(p)]}/{k}"] = v.detach().contiguous().reshape(v.shape)
        tensors["rng/torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "state.safetensors"))
        write_json(tmp / "state.json", {**state, "step": step})
    write_json(final / CKPT_MARKER, {"step": step})
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """Newest checkpoint whose COMPLETE marker exists; incomplete ones are ignored (transformers#35782)."""
    done = sorted(p for p in (out / CKPT_DIR).glob("step-*") if (p / CKPT_MARKER).is_file())
    return done[-1] if done else None


def load_checkpoint(path: Path, model, optim) -> dict:
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from safetensors.torch import load_file

    tensors = load_file(str(path / "state.safetensors"))
    params = dict(_trainable(model))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param/{n}"])
    for n, p in params.items():
        st = {k.rsplit("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"optim/{n}/")}
        if st:
            optim.state[p] = st
    torch.set_rng_state(tensors["rng/torch"])
    return json.loads((path / "state.json").read_text())


# ---------------------------------------------------------------------------------------------
# the recipe


def structural_settings(cfg: FinetuneConfig, base_sha: str) -> dict:
    """What a checkpoint means. The data by content, not by path: the same file spelled another way resumes,
    a changed file at the same path does not."""
    picked = {"base_sha256": base_sha, **{k: v for k, v in asdict(cfg).items() if k in FINETUNE_STRUCTURAL}}
    picked["data"] = sha256_file(cfg.data)
    return json.loads(json.dumps(picked))  # tuples → lists, as they read back from state.json


@dataclass
class Run:
    """What the steps of a fine-tune share: made once by setup(), read by the loop and the save."""

    cfg: FinetuneConfig
    rank: int
    world: int
    device: str
    out: Path
    base_dir: Path
    base_sha: str
    structure: dict  # what a checkpoint means (structural_settings)
    tokenizer: object
    dataset: object  # data.Dataset: examples, stats, truncated
    train_set: list
    eval_set: list
    total_steps: int
    model: object
    optim: object
    frozen_base: dict | None  # bits/param of the 4-bit base (None for plain LoRA)

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum * self.world

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.train_set) // self.global_batch)


def linear_layers(config) -> tuple[str, ...]:
    """The names of the model's linear layers (q_proj, …; Phi-3's fused qkv_proj and gate_up_proj), in model order,
    its output head left out: read from a weightless copy built from the config on the meta device."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    names = [n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]
    return tuple(dict.fromkeys(names))


def lora_targets(requested: tuple[str, ...], linears: tuple[str, ...], base_dir: Path) -> tuple[str, ...]:
    """The layers LoRA wraps: all of them by default. A list that names a layer the model lacks, or leaves one
    out, is refused: peft would skip it silently, and the fine-tune would train part of the model."""
    if tuple(requested) == (LORA_ALL_LINEAR,):
        return linears
    lacking = [t for t in requested if t not in linears]
    left_out = [t for t in linears if t not in requested]
    if lacking or left_out:
        what = [f"names {', '.join(lacking)}, which this model lacks"] if lacking else []
        what += [f"leaves out {', '.join(left_out)}, which would stay untrained"] if left_out else []
        raise UsageError(
            f"--target-modules {' and '.join(what)} (its linear layers: {', '.join(linears)})",
            str(base_dir),
            f"name every one of them, or leave --target-modules at {LORA_ALL_LINEAR}",
        )
    return tuple(requested)


def optimizer_steps(cfg: FinetuneConfig, examples: int, world: int = 1) -> int:
    """The run's optimizer steps: --max-steps, else its epochs over the examples less the eval share, each step
    batch × accumulation × processes examples."""
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = max(1, (examples - int(examples * cfg.eval_split)) // (cfg.batch_size * cfg.grad_accum * world))
    return max(1, math.ceil(cfg.epochs * per_epoch))


def setup(cfg: FinetuneConfig) -> Run:
    """Refusals first (nothing is written), then the data, the split, the model and the optimizer."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from transformers import AutoConfig

    cfg.check()
    cfg = replace(cfg, lr=cfg.lr or FINETUNE_LR[cfg.method])  # the manifest records the rate used
    rank, world = _dist_init()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    out = Path(cfg.out)
    check_not_input(out, [cfg.base, cfg.data])  # checkpoints land in OUT long before the adapter does
    if (out / cfg.output_dir).exists() and not (cfg.force or cfg.resume):
        what = "an adapter" if cfg.adapters else "a model"
        raise UsageError(f"{what} already exists", str(out / cfg.output_dir), "pass --resume, --force or another --out")
    if (out / CKPT_DIR).exists() and not (cfg.force or cfg.resume):
        raise UsageError(
            "checkpoints of an earlier run are here",
            str(out / CKPT_DIR),
            "pass --resume to continue it, --force to start over, or another --out",
        )
    base_dir = resolve_model(cfg.base)
    tokenizer = load_tokenizer(base_dir)
    dataset = load_dataset(cfg.data, tokenizer, cfg.seq_len, cfg.strict)  # raises before anything is written
    base_sha = base_fingerprint(base_dir)

    examples = list(dataset.examples)
    random.Random(cfg.seed).shuffle(examples)
    n_eval = int(len(examples) * cfg.eval_split)
    total_steps = optimizer_steps(cfg, len(examples), world)

    longest = max(len(e.input_ids) for e in examples)
    config = AutoConfig.from_pretrained(base_dir)
    if cfg.adapters:  # refused before any weight loads
        cfg = replace(cfg, target_modules=lora_targets(cfg.target_modules, linear_layers(config), base_dir))
    cfg, why = fit_memory(cfg, base_dir, longest, device)
    if why and rank == 0:
        report.err.print(f"[yellow]note:[/] {why}")
    torch.manual_seed(cfg.seed)
    model = load_model(base_dir, cfg, device)  # the manifest's config records the checkpointing decided here
    frozen_base = quantized_bits_per_param(model) if cfg.quantized else None  # before any eval-mode repacking
    trainable = [p for _, p in _trainable(model)]
    if device == "cuda":
        import bitsandbytes as bnb

        opt_cls = bnb.optim.PagedAdamW8bit if cfg.optim_bits == 8 else bnb.optim.PagedAdamW32bit
        optim = opt_cls(trainable, lr=cfg.lr, weight_decay=0.0)
    else:
        if rank == 0:
            report.err.print("[yellow]note:[/] paged optimizers need CUDA; on CPU edgeq uses plain AdamW")
        optim = cpu_adamw(trainable, cfg.lr)
    return Run(
        cfg=cfg,
        rank=rank,
        world=world,
        device=device,
        out=out,
        base_dir=base_dir,
        base_sha=base_sha,
        structure=structural_settings(cfg, base_sha),
        tokenizer=tokenizer,
        dataset=dataset,
        train_set=examples[n_eval:],
        eval_set=examples[:n_eval],
        total_steps=total_steps,
        model=model,
        optim=optim,
        frozen_base=frozen_base,
    )


def cpu_adamw(params, lr: float):
    """AdamW without weight decay, its update fused into one kernel: the same arithmetic as the per-tensor loop,
    3.5× its rate on a 2-core CPU (benchmarks/finetune_plan.py --adamw), which a full fine-tune's step feels."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install

    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)


def plan(cfg: FinetuneConfig) -> FinetunePrediction:
    """What this fine-tune will cost on a CPU (trainplan.py), before any weight loads: the base's shape, the
    micro-batch padded to the data's longest example (the one that costs most), the accumulation, and the
    checkpointing setup() would choose."""

    base_dir = resolve_model(cfg.base, weights=False)
    dataset = load_dataset(cfg.data, load_tokenizer(base_dir), cfg.seq_len, cfg.strict)
    longest = max(len(e.input_ids) for e in dataset.examples)
    cfg, why = fit_memory(cfg, base_dir, longest, "cpu", strict=False)
    d, tokens = Dims.from_config(base_dir), cfg.batch_size * longest  # memory holds one micro-batch at a time
    files, width = checkpoint_size(base_dir), dtype_bytes(weights_dtype(cfg, "cpu"))
    p = predict_finetune(d, CALIBRATION, tokens, cfg.lora_r, cfg.gradient_checkpointing, files, 1, cfg.method, width)
    gpu = tuple(predict_gpu(d, CALIBRATION, tokens, cfg.lora_r, on, m, cfg.optim_bits)
                for m in GPU_METHODS for on in (True, False))  # fmt: skip
    return replace(p, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, chosen=why, gpu=gpu)


def resume_point(run: Run) -> tuple[int, list[float]]:
    """Step and loss history to continue from: the newest complete checkpoint under --resume, refused
    if it was made with other structural settings; (0, []) otherwise."""

    out, cfg = run.out, run.cfg
    if not cfg.resume:
        if run.rank == 0 and (out / CKPT_DIR).exists():  # --force: a fresh run must not resume another's
            remove_output(out / CKPT_DIR, protect=[run.base_dir, cfg.data])
        return 0, []
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        raise UsageError("no complete checkpoint to resume from", str(out / CKPT_DIR), "run without --resume")
    saved = json.loads((ckpt / "state.json").read_text())["structure"]
    changed = [f"{k}: {saved.get(k)!r} → {v!r}" for k, v in run.structure.items() if saved.get(k) != v]
    if changed:
        raise UsageError(
            "cannot resume with changed settings (" + "; ".join(changed) + ")",
            str(ckpt),
            "use the original settings, or start fresh in another --out",
        )
    state = load_checkpoint(ckpt, run.model, run.optim)
    if run.rank == 0:
        report.err.print(f"resuming from {ckpt.name} (step {state['step']} of {run.total_steps})")
    return state["step"], state["losses"]


def lr_at(run: Run, step: int) -> float:
    """Linear warm-up over the first 5 % of steps, then cosine decay to 10 % of --lr."""
    lr, total = run.cfg.lr, run.total_steps
    warmup = max(1, total // 20)
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def batches_for(run: Run, step: int):
    """The micro-batches of optimizer step `step` for this rank: a pure function of (seed, step), so a
    resumed run sees the very batches the interrupted one would have."""
    epoch, pos = divmod(step, run.steps_per_epoch)
    order = list(range(len(run.train_set)))
    random.Random(run.cfg.seed * 1000 + epoch).shuffle(order)
    chunk = order[pos * run.global_batch : (pos + 1) * run.global_batch]
    mine = chunk[run.rank :: run.world]
    for i in range(0, len(mine), run.cfg.batch_size):
        yield [run.train_set[j] for j in mine[i : i + run.cfg.batch_size]]


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def train_loop(run: Run, start_step: int, losses: list[float]) -> int:
    """Steps start_step … total_steps, appending to losses, a checkpoint every --save-every steps.
    Returns the number of optimizer steps this process took (a resume must not redo the checkpoint's)."""

    cfg, rank = run.cfg, run.rank
    if rank == 0:
        check_free_disk(run.out, 64 << 20, "checkpoints")
    t0, steps_run = time.time(), 0
    run.model.train()
    bar = report.progress("finetune", run.total_steps, start_step) if rank == 0 else contextlib.nullcontext(None)
    with bar as update:
        for step in range(start_step, run.total_steps):
            for g in run.optim.param_groups:
                g["lr"] = lr_at(run, step)
            micro = [collate(mb, pad_id(run.tokenizer), run.device) for mb in batches_for(run, step)]
            losses.append(round(train_step(run.model, run.optim, micro, cfg, run.world), 6))
            steps_run += 1
            done = step + 1
            if update:
                update(done, f"loss {losses[-1]:.4f} · {steps_run / (time.time() - t0):.2f} step/s")
            if rank == 0 and (done % cfg.save_every == 0 or done == run.total_steps):
                save_checkpoint(run.out, done, run.model, run.optim, {"losses": losses, "structure": run.structure})
            if run.world > 1:
                import torch.distributed as dist

                dist.barrier()
    return steps_run


def summarize(run: Run, start_step: int, steps_run: int, losses: list[float], seconds: float) -> FinetuneResult:
    """Held-out loss (all ranks' shares together) and the numbers the manifest and the CLI report."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install

    eval_loss = None
    if run.eval_set:
        mine = run.eval_set[run.rank :: run.world]
        t = torch.tensor(
            evaluate_loss(run.model, mine, pad_id(run.tokenizer), run.device, run.cfg), dtype=torch.float64
        )
        _all_reduce_sum([t], run.world)  # (summed loss, tokens)
        eval_loss = float(t[0] / max(float(t[1]), 1.0))
    return FinetuneResult(
        path=str(run.out),
        method=run.cfg.method,
        output=run.cfg.output_dir,
        train_loss_first=losses[0] if losses else None,
        train_loss_last=losses[-1] if losses else None,
        eval_loss=eval_loss,
        steps=run.total_steps,
        resumed_from_step=start_step,
        steps_run=steps_run,
        seconds=round(seconds, 1),
        seconds_per_step=round(seconds / max(1, run.total_steps - start_step), 2),
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        trainable_params=sum(p.numel() for _, p in _trainable(run.model)),
        total_params=sum(p.numel() for p in run.model.parameters()),
        world_size=run.world,
        examples={"train": len(run.train_set), "eval": len(run.eval_set), "truncated": run.dataset.truncated},
        data=run.dataset.stats,
        frozen_base=run.frozen_base,
        peak_vram_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1) if run.device == "cuda" else None,
    )


def finetune(cfg: FinetuneConfig) -> FinetuneResult:
    """setup → resume check → train loop → held-out loss → save the adapter (rank 0)."""
    run = setup(cfg)
    start_step, losses = resume_point(run)
    t0 = time.time()
    steps_run = train_loop(run, start_step, losses)
    result = summarize(run, start_step, steps_run, losses, time.time() - t0)
    if run.rank == 0:
        _write_output(run, losses, result)
    return result


def evaluate_loss(model, eval_set, pad_id, device, cfg) -> tuple[float, int]:
    """Summed loss and labelled-token count over eval_set (this rank's share of the held-out set)."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(eval_set), cfg.batch_size):
            loss, n = forward_loss(model, collate(eval_set[i : i + cfg.batch_size], pad_id, device), cfg.loss_chunk)
            total, count = total + float(loss), count + n
    model.train()
    return total, count


def wrapped_modules(model) -> dict:
    """The layers LoRA wraps, by name, and how many modules that is (layers × targets)."""
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    return {"names": sorted({n.rsplit(".", 1)[-1] for n in wrapped}), "count": len(wrapped)}


def _write_output(run: Run, losses: list[float], result: FinetuneResult) -> None:
    """The adapter (peft's folder), or for a full fine-tune the whole model as a Hugging Face folder with the base's
    tokenizer and template: what export reads directly. Either with the run's manifest."""
    out, model, cfg, base_dir = run.out, run.model, run.cfg, run.base_dir

    with atomic_dir(out / cfg.output_dir, force=True, protect=[base_dir, cfg.data]) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in () if cfg.adapters else TOKENIZER_FILES:
            if (base_dir / name).is_file():
                shutil.copyfile(base_dir / name, tmp / name)
        write_json(
            tmp / FINETUNE_MANIFEST,
            {
                "schema": MANIFEST_SCHEMA,
                "edgeq_version": __version__,
                "stage": "finetune",
                "inputs": {
                    "base": str(base_dir),
                    "base_sha256": run.base_sha,
                    "data": cfg.data,
                    "data_sha256": sha256_file(cfg.data),
                },
                "config": {f.name: getattr(cfg, f.name) for f in fields(cfg)},
                "quantization": {
                    "quant": cfg.quant if cfg.quantized else UNQUANTIZED,
                    "double_quant": cfg.double_quant and cfg.quantized,
                    "blocksize": NF4_BLOCKSIZE,
                    "compute_dtype": compute_dtype(run.device),
                    "weights_dtype": weights_dtype(cfg, run.device),  # the base as it trained (frozen or not)
                },
                "structure": run.structure,
                "lora_modules": wrapped_modules(model),  # what peft really wrapped: every --target-modules layer
                "losses": losses,
                "summary": result.summary(),
                "versions": versions(),
            },
        )


FROZEN_BASE = {"lora": "not quantized", "full": "none: every weight trained (full fine-tune)"}  # qlora: its bits


def summary_table(s: FinetuneResult):
    """The run at a glance (the CLI prints it)."""

    fb = s.frozen_base
    rows = [
        ["train loss (first → last)", f"{s.train_loss_first:.4f} → {s.train_loss_last:.4f}"],
        ["eval loss", "-" if s.eval_loss is None else f"{s.eval_loss:.4f}"],
        ["steps", f"{s.steps} ({s.seconds_per_step} s/step)"],
        ["time", f"{s.seconds:.0f} s"],
        ["peak RSS", f"{s.peak_rss_mib:.0f} MiB"],
        ["trainable params", f"{s.trainable_params:,} of {s.total_params:,}"],
        [
            "frozen base",
            FROZEN_BASE[s.method] if fb is None else f"{fb['bits_per_param']:.3f} bits/param (QLoRA paper: 4.127)",
        ],
        [s.output, str(Path(s.path) / s.output)],
    ]
    return report.table("finetune summary", ["", ""], rows)

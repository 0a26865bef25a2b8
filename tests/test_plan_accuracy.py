"""plan's peak-RSS prediction vs what `edgeq bench` measures: ±10 % for several quant types, two
contexts and both formats, on artifacts of the default model built here."""

import pytest

from edgeq.bench import measure_in_child
from edgeq.plan import Dims, calibration, gguf_tensor_types, predict_gguf_rss, predict_onnx_rss
from tests.conftest import run_edgeq

pytestmark = pytest.mark.slow
GGUF = ["Q8_0", "Q4_K_M", "Q4_0"]
ONNX = ["int4-block32", "int8"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, default_model):
    from edgeq.export.gguf import quantize_gguf, write_float_gguf

    root = tmp_path_factory.mktemp("accuracy")
    flt = root / "model.F16.gguf"
    write_float_gguf(default_model, flt, "F16")
    arts = {}
    for q in GGUF:
        quantize_gguf(flt, root / f"{q}.gguf", q)
        arts[q] = ("gguf", root / f"{q}.gguf", gguf_tensor_types(flt, q))
    for q in ONNX:
        r = run_edgeq("export", "--model", default_model, "--format", "onnx", "--quant", q, "--out", root / q)
        assert r.returncode == 0, r.stderr[-2000:]
        arts[q] = ("onnx", root / q, None)
    return arts


@pytest.mark.parametrize("ctx", [256, 2048])
@pytest.mark.parametrize("quant", GGUF + ONNX)
def test_predicted_peak_rss_within_10_percent(artifacts, default_model, quant, ctx):
    fmt, path, types = artifacts[quant]
    d, cal = Dims.from_config(default_model), calibration()
    if fmt == "gguf":
        predicted = predict_gguf_rss(d, types, ctx, 128, cal)["total"] / 2**20
    else:
        predicted = predict_onnx_rss(d, quant, ctx, 128, cal)["total"] / 2**20
    measured = measure_in_child(fmt, path, 128, 32, 2, ctx)["peak_rss_mib"]
    print(f"{fmt} {quant} ctx {ctx}: predicted {predicted:.1f} MiB, measured {measured:.1f} MiB")
    assert abs(predicted / measured - 1) <= 0.10

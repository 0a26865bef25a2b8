"""Property-based fuzzing of every parser and validator of untrusted input.

Each parser gets generated inputs and mutations of a valid one (bytes flipped, cut, inserted, repeated). The only
allowed outcomes are a result or one clean UsageError: never another exception, never a hang. CI runs
FUZZ_EXAMPLES examples per parser; the long run is

    EDGEQ_FUZZ_EXAMPLES=5000 pytest tests/hostile/test_fuzz.py -p no:cacheprovider

and every failing input hypothesis finds becomes a regression test (the @example lines below).
"""

import itertools
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgeq.errors import UsageError
from tests.conftest import CALIBRATION_POINT, sweep_record

FUZZ_EXAMPLES = int(os.environ.get("EDGEQ_FUZZ_EXAMPLES", "40"))
ROOT = Path(__file__).parents[2]
_names = itertools.count()

fuzz = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=timedelta(seconds=30),  # a hang, not a slow machine: each input takes milliseconds
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@st.composite
def mutated(draw, seed: bytes, max_ops: int = 4):
    """`seed` with a few edits: a byte changed, a cut, an insertion, a range repeated."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "set"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, ord("9"), ord("-"), ord('"'), ord("[")]))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "repeat":
            n = draw(st.integers(1, 64))
            data[at:at] = data[at : at + n] * draw(st.integers(1, 8))
    return bytes(data)


def inputs(seed: bytes):
    return st.one_of(mutated(seed), st.binary(max_size=512))


def _file(tmp_path, data: bytes, name: str) -> Path:
    path = tmp_path / f"{next(_names)}-{name}"
    path.write_bytes(data)
    return path


def _clean(call):
    """Run a parser: a result, or one UsageError that renders as one line naming what to fix."""
    try:
        return call()
    except UsageError as e:
        line = e.line()
        assert line.startswith("error: ") and "Traceback" not in line
        return None


# --- seeds ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_seed(tmp_path_factory):
    from edgeq.probe import tiny_gguf

    dims = {"hidden": 32, "ffn": 64, "heads": 2, "kv_heads": 1}
    return tiny_gguf(tmp_path_factory.mktemp("seed") / "t.gguf", dims=dims).read_bytes()


def _onnx_seed() -> bytes:
    from edgeq.runtime import ASSETS
    from edgeq.spec import PROBE_ONNX

    return (ASSETS / PROBE_ONNX / "model.onnx").read_bytes()


def _calibration_seed() -> bytes:
    from edgeq.calibration import shipped_calibrations

    return shipped_calibrations()[0].read_bytes()


# --- the parsers ----------------------------------------------------------------------------------------------


@fuzz
@given(data=st.data())
def test_gguf_header_check(tmp_path, gguf_seed, data):
    from edgeq.ggufcheck import check_gguf

    blob = data.draw(st.one_of(mutated(gguf_seed[:4096], 6), mutated(gguf_seed), st.binary(max_size=256)))
    header = _clean(lambda: check_gguf(_file(tmp_path, blob, "m.gguf")))
    if header is not None:  # what passes is consistent: every tensor lies inside the file
        assert all(t["start"] + t["bytes"] <= len(blob) for t in header["tensor_info"])


@fuzz
@given(blob=inputs(_onnx_seed()[:8192]))
@example(blob=b"\x3a\x02\x2a\x80")  # a varint cut inside a nested message
def test_onnx_external_data_parser(tmp_path, blob):
    from edgeq.onnxcheck import external_locations

    result = _clean(lambda: external_locations(_file(tmp_path, blob, "m.onnx")))
    assert result is None or all(isinstance(loc, str) for loc in result)


@fuzz
@given(config=inputs((ROOT / "edgeq/assets/probe_onnx/genai_config.json").read_bytes()))
def test_onnx_folder_check(tmp_path_factory, config):
    import shutil

    from edgeq.onnxcheck import check_onnx_folder
    from edgeq.runtime import ASSETS
    from edgeq.spec import PROBE_ONNX

    folder = shutil.copytree(ASSETS / PROBE_ONNX, tmp_path_factory.mktemp("onnx") / "m")
    (folder / "genai_config.json").write_bytes(config)
    _clean(lambda: check_onnx_folder(folder))


@fuzz
@given(
    header=st.one_of(
        st.binary(max_size=300),
        mutated(
            json.dumps(
                {"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
            ).encode()
        ),
    )
)
@example(header=b'{"w": {"dtype": "F32", "shape": [1]}}')  # round 3: no offsets was a KeyError
def test_safetensors_header(tmp_path, header):
    from edgeq.io import check_safetensors

    path = _file(tmp_path, len(header).to_bytes(8, "little") + header + b"\0" * 16, "model.safetensors")
    _clean(lambda: check_safetensors(path))


LINES = (ROOT / "examples/drone/train.jsonl").read_bytes()[:2000]


@fuzz
@given(blob=inputs(LINES))
@example(blob=b'{"prompt": "a", "response": "b", "n": ' + b"1" * 5000 + b"}\n")
def test_jsonl_data(tmp_path, blob):
    from edgeq.data import read_jsonl

    try:
        read_jsonl(_file(tmp_path, blob, "d.jsonl"))
    except UsageError as e:  # ConfigError is a UsageError: one line per bad data line, each naming it
        assert all("\n" not in p for p in getattr(e, "problems", []))


@fuzz
@given(blob=inputs((ROOT / "profiles/drone.yaml").read_bytes()))
@example(blob=b"memory_budget_mib: " + b"9" * 5000)
def test_profile_yaml(tmp_path, blob):
    from edgeq.profiles import load_profile

    _clean(lambda: load_profile(str(_file(tmp_path, blob, "p.yaml"))))


@fuzz
@given(blob=inputs(_calibration_seed()))
def test_calibration_file(tmp_path, blob):
    import math

    from edgeq.calibration import load_calibration

    cal = _clean(lambda: load_calibration(_file(tmp_path, blob, "c.json")))
    if cal is not None:  # what passes can be predicted with: every term finite and non-negative
        assert math.isfinite(cal["gguf"]["base_mib"]) and cal["gguf"]["base_mib"] >= 0


@fuzz
@given(blob=inputs(json.dumps({"schema": "edgeq.calibration-points/2", "points": [CALIBRATION_POINT]}).encode()))
def test_points_file(tmp_path, blob):
    from edgeq.calibrate import load_points

    _clean(lambda: load_points(_file(tmp_path, blob, "points.json")))


@fuzz
@given(
    config=inputs(json.dumps({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}).encode()),
    manifest=inputs(
        json.dumps(
            {"inputs": {"base": "b", "base_sha256": "ab"}, "quantization": {"quant": "nf4", "double_quant": True}}
        ).encode()
    ),
)
def test_adapter_config_and_manifest(tmp_path_factory, config, manifest):
    from edgeq.merge import adapter_config, trained_manifest
    from edgeq.spec import FINETUNE_MANIFEST

    folder = tmp_path_factory.mktemp("adapter")
    (folder / "adapter_config.json").write_bytes(config)
    (folder / FINETUNE_MANIFEST).write_bytes(manifest)
    _clean(lambda: adapter_config(folder))
    _clean(lambda: trained_manifest(folder))


@fuzz
@given(
    blob=inputs(
        json.dumps(
            {
                "num_attention_heads": 4,
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "intermediate_size": 128,
                "vocab_size": 100,
            }
        ).encode()
    )
)
def test_model_config(tmp_path_factory, blob):
    from edgeq.footprint import Dims

    folder = tmp_path_factory.mktemp("model")
    (folder / "config.json").write_bytes(blob)
    _clean(lambda: Dims.from_config(folder))


@fuzz
@given(
    memo=inputs(b'{"/a:1:2": "abc"}'),
    decision=inputs(b'{"extra_buffer_types": true, "reason": "probed"}'),
    record=inputs(json.dumps(sweep_record([])).encode()),
)
def test_caches_read_back(tmp_path_factory, memo, decision, record):
    from edgeq.build import read_memo
    from edgeq.probe import _cached_decision
    from edgeq.spec import BUILD_STAGE_RECORD, BUILD_STATE_DIR
    from edgeq.sweep import measured_from

    folder = tmp_path_factory.mktemp("cache")
    assert isinstance(read_memo(_file(folder, memo, "memo.json")), dict)  # a bad memo is dropped, never an error
    _cached_decision(_file(folder, decision, "llama.json"))  # a bad decision is None: probed again
    stage = folder / BUILD_STATE_DIR / "sweep" / BUILD_STAGE_RECORD
    stage.parent.mkdir(parents=True)
    stage.write_bytes(record)
    _clean(lambda: measured_from(folder))

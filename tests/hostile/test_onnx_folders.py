"""ONNX GenAI folders that would load code or read outside themselves: refused before ONNX Runtime opens them."""

import json
import shutil

import pytest

from edgeq.errors import UsageError
from edgeq.onnxcheck import check_onnx_folder, external_locations
from edgeq.runtime import ASSETS
from edgeq.spec import EXIT_USAGE, PROBE_ONNX
from tests.conftest import run_edgeq


@pytest.fixture
def folder(tmp_path):
    return shutil.copytree(ASSETS / PROBE_ONNX, tmp_path / "onnx")


def _config(folder, change):
    cfg = json.loads((folder / "genai_config.json").read_text())
    change(cfg)
    (folder / "genai_config.json").write_text(json.dumps(cfg))


def test_the_shipped_probe_model_passes(folder):
    assert check_onnx_folder(folder) == folder
    assert set(external_locations(folder / "model.onnx")) == {"model.onnx.data"}


def test_a_custom_op_library_is_refused_and_bench_never_loads_it(folder, tmp_path):
    marker = tmp_path / "loaded"
    _config(folder, lambda c: c["model"]["decoder"]["session_options"].update(custom_ops_library=str(marker)))
    with pytest.raises(UsageError, match="custom_ops_library asks ONNX Runtime to load a native library"):
        check_onnx_folder(folder)
    r = run_edgeq("bench", folder, "--reps", 1, "--prompt-tokens", 8, "--gen-tokens", 2)
    assert r.returncode == EXIT_USAGE and "custom_ops_library" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("name", ["../model.onnx", "/etc/passwd", "sub/../../x.onnx", ""])
def test_a_model_file_outside_the_folder_is_refused(folder, name):
    _config(folder, lambda c: c["model"]["decoder"].update(filename=name))
    with pytest.raises(UsageError, match="is not a file inside the model folder"):
        check_onnx_folder(folder)


# Files other parts of a GenAI config open (multimodal encoders, pipelines, adapters): each as contained as the
# decoder's.
@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        ("vision", "filename", "../v.onnx"),
        ("embedding", "filename", "/etc/passwd"),
        ("speech", "config_path", "../../speech.json"),
        ("pipeline", "file_name", "x/../../p.onnx"),
    ],
)
def test_a_file_named_outside_the_decoder_is_contained_too(folder, where, key, value):
    _config(folder, lambda c: c["model"].update({where: {key: value}}))
    with pytest.raises(UsageError, match=rf"model\.{where}\.{key} .* is not a file inside the model folder"):
        check_onnx_folder(folder)


def test_external_data_outside_the_folder_is_refused(folder):
    graph = folder / "model.onnx"
    graph.write_bytes(graph.read_bytes().replace(b"model.onnx.data", b"../../etc/passw"))  # same length
    with pytest.raises(UsageError, match="external data location '../../etc/passw' is outside the model folder"):
        check_onnx_folder(folder)


def test_a_link_out_of_the_folder_is_refused(folder, tmp_path):
    (tmp_path / "elsewhere.data").write_bytes((folder / "model.onnx.data").read_bytes())
    (folder / "model.onnx.data").unlink()
    (folder / "model.onnx.data").symlink_to(tmp_path / "elsewhere.data")
    with pytest.raises(UsageError, match="model.onnx.data is a link out of the ONNX model folder"):
        check_onnx_folder(folder)


def test_a_config_that_is_not_json_is_one_line(folder):
    (folder / "genai_config.json").write_text("{" * 100_000)
    with pytest.raises(UsageError, match="genai_config.json is not valid JSON"):
        check_onnx_folder(folder)

"""A saved importance matrix (the build's sweep writes one, the export reads it) is checked before llama.cpp's
quantizer gets a pointer into it: one clear error for each way the file can be wrong."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from edgeq.errors import EdgeqError
from edgeq.export.imatrix import load_imatrix, save_imatrix


def test_a_round_trip_keeps_every_value(tmp_path):
    m = {"blk.0.ffn_up.weight": np.arange(8, dtype=np.float32), "blk.0.attn_q.weight": np.ones(4, np.float32)}
    save_imatrix(m, {"tokens": 1024}, tmp_path / "m.safetensors")
    loaded, info = load_imatrix(tmp_path / "m.safetensors")
    assert {k: v.tolist() for k, v in loaded.items()} == {k: v.tolist() for k, v in m.items()}
    assert info["tokens"] == "1024"


@pytest.mark.parametrize(
    ("name", "arrays", "why"),
    [
        ("nan", {"a.weight": np.array([1.0, np.nan], np.float32)}, "finite"),
        ("negative", {"a.weight": np.array([1.0, -2.0], np.float32)}, "non-negative"),
        ("2-d", {"a.weight": np.ones((2, 2), np.float32)}, "(2, 2)"),
        ("float64", {"a.weight": np.ones(2, np.float64)}, "float64"),
    ],
)
def test_wrong_values_are_refused(tmp_path, name, arrays, why):
    save_file(arrays, str(tmp_path / f"{name}.safetensors"))
    with pytest.raises(EdgeqError, match="not a usable importance matrix") as e:
        load_imatrix(tmp_path / f"{name}.safetensors")
    assert why in str(e.value) and e.value.where == str(tmp_path / f"{name}.safetensors")


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 7, (10**12).to_bytes(8, "little") + b"{}", b"\x80\x04\x95 pickle, not safetensors"],
    ids=["empty", "short", "header-past-end", "pickle"],
)
def test_files_that_are_not_safetensors_are_refused(tmp_path, content):
    (tmp_path / "m.safetensors").write_bytes(content)
    with pytest.raises(EdgeqError, match="not a usable importance matrix"):
        load_imatrix(tmp_path / "m.safetensors")


def test_a_missing_file_is_one_error(tmp_path):
    with pytest.raises(EdgeqError, match="not a usable importance matrix"):
        load_imatrix(tmp_path / "absent.safetensors")

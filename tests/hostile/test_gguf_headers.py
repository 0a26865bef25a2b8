"""Crafted GGUF files: each is refused in Python with one line, before llama.cpp could touch it."""

import struct

import pytest

from edgeq.errors import UsageError
from edgeq.ggufcheck import check_gguf


def _gguf(tensors=(), kv=(), version=3, n_tensors=None, n_kv=None, pad_to=32, data=b""):
    """A minimal GGUF: header, key/values (strings only), tensor infos, aligned data."""

    def s(x: bytes) -> bytes:
        return struct.pack("<Q", len(x)) + x

    out = b"GGUF" + struct.pack(
        "<IQQ", version, len(tensors) if n_tensors is None else n_tensors, len(kv) if n_kv is None else n_kv
    )
    for k, v in kv:
        out += s(k) + struct.pack("<I", 8) + s(v)
    for name, dims, ttype, offset in tensors:
        out += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ttype, offset)
    out += b"\0" * (-len(out) % pad_to)
    return out + data


def _refused(tmp_path, blob, needle):
    p = tmp_path / "m.gguf"
    p.write_bytes(blob)
    with pytest.raises(UsageError) as e:
        check_gguf(p)
    assert needle in e.value.line() and "\n" not in e.value.line()


def test_a_sound_minimal_file_passes(tmp_path):
    p = tmp_path / "ok.gguf"
    p.write_bytes(_gguf(tensors=[(b"w", [8], 0, 0)], kv=[(b"general.architecture", b"llama")], data=b"\0" * 32))
    assert check_gguf(p)["tensors"] == 1


def test_bad_magic(tmp_path):
    _refused(tmp_path, b"GGML" + b"\0" * 40, "bad magic")


def test_bad_version(tmp_path):
    _refused(tmp_path, _gguf(version=99), "unsupported version 99")


def test_truncated_header(tmp_path):
    _refused(tmp_path, _gguf(kv=[(b"general.name", b"x" * 100)])[:60], "not a valid GGUF file")


def test_absurd_counts(tmp_path):
    _refused(tmp_path, _gguf(n_tensors=1 << 40), "absurd counts")


def test_string_longer_than_file(tmp_path):
    blob = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 50) + b"k"
    _refused(tmp_path, blob, "exceeds the file size")


def test_tensor_past_end_of_file(tmp_path):
    # CVE-2026-7482 shape: offset + size beyond EOF
    _refused(tmp_path, _gguf(tensors=[(b"w", [1024], 0, 0)], data=b"\0" * 32), "past the end of the file")


def test_tensor_offset_overflow(tmp_path):
    _refused(tmp_path, _gguf(tensors=[(b"w", [8], 0, (1 << 64) - 32)], data=b"\0" * 32), "past the end of the file")


def test_unknown_tensor_type(tmp_path):
    _refused(tmp_path, _gguf(tensors=[(b"w", [8], 999, 0)], data=b"\0" * 32), "unknown type 999")


def test_too_many_dimensions(tmp_path):
    _refused(tmp_path, _gguf(tensors=[(b"w", [1] * 9, 0, 0)], data=b"\0" * 32), "9 dimensions")


def test_empty_and_missing_files(tmp_path):
    _refused(tmp_path, b"", "bad magic")
    with pytest.raises(UsageError, match="file not found"):
        check_gguf(tmp_path / "nope.gguf")

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


# ---------------------------------------------------------------------------------------------
# metadata types: what llama.cpp reads must have the type it reads


def _typed_gguf(kv: list[tuple[bytes, int, bytes]], tensors=()) -> bytes:
    """Header + typed key/values (raw value bytes as given) + tensor infos, padded to 32."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for key, vtype, raw in kv:
        out += struct.pack("<Q", len(key)) + key + struct.pack("<I", vtype) + raw
    for name, dims, ttype, offset in tensors:
        out += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ttype, offset)
    return out + b"\0" * (-len(out) % 32)


def _str(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def _strings(items) -> bytes:  # ARRAY of STRING
    return struct.pack("<IQ", 8, len(items)) + b"".join(_str(s) for s in items)


def _ints(items, itype=5, fmt="<i") -> bytes:  # ARRAY of INT32 by default
    return struct.pack("<IQ", itype, len(items)) + b"".join(struct.pack(fmt, i) for i in items)


ARCH = (b"general.architecture", 8, _str(b"llama"))
TOKENS = (b"tokenizer.ggml.tokens", 9, _strings([b"a", b"b", b"c"]))


def test_a_sound_vocabulary_passes(tmp_path):
    p = tmp_path / "ok.gguf"
    types = (b"tokenizer.ggml.token_type", 9, _ints([1, 1, 3]))
    p.write_bytes(_typed_gguf([ARCH, TOKENS, types, (b"tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 2))]))
    assert check_gguf(p)["metadata"]["tokenizer.ggml.eos_token_id"] == 2


@pytest.mark.parametrize(
    "kv, needle",
    [
        ((b"general.alignment", 8, _str(b"32")), "general.alignment is STRING, llama.cpp reads UINT32"),
        ((b"llama.block_count", 8, _str(b"30")), "llama.block_count is STRING, llama.cpp reads UINT32"),
        ((b"llama.context_length", 10, struct.pack("<Q", 2048)), "llama.context_length is UINT64"),
        ((b"llama.rope.freq_base", 12, struct.pack("<d", 1e4)), "llama.rope.freq_base is FLOAT64"),
        ((b"tokenizer.ggml.eos_token_id", 5, struct.pack("<i", -1)), "eos_token_id is INT32"),
        ((b"tokenizer.ggml.add_bos_token", 4, struct.pack("<I", 1)), "add_bos_token is UINT32"),
        ((b"llama.attention.head_count", 8, _str(b"9")), "head_count is STRING, llama.cpp reads UINT32 or an array"),
        ((b"tokenizer.ggml.merges", 9, _ints([1, 2])), "merges is ARRAY of INT32, llama.cpp reads ARRAY of STRING"),
    ],
)
def test_a_key_of_the_wrong_type_is_refused(tmp_path, kv, needle):
    _refused(tmp_path, _typed_gguf([ARCH, TOKENS, kv]), needle)


def test_token_list_of_the_wrong_element_type_is_refused(tmp_path):
    _refused(tmp_path, _typed_gguf([ARCH, (b"tokenizer.ggml.tokens", 9, _ints([1, 2, 3]))]), "ARRAY of INT32")


@pytest.mark.parametrize("key", [b"tokenizer.ggml.token_type", b"tokenizer.ggml.scores"])
def test_per_token_arrays_must_match_the_vocabulary(tmp_path, key):
    raw = _ints([1, 1]) if key.endswith(b"type") else _ints([0, 0], itype=6, fmt="<f")
    _refused(tmp_path, _typed_gguf([ARCH, TOKENS, (key, 9, raw)]), "has 2 entries for 3 tokens")


def test_a_special_token_outside_the_vocabulary_is_refused(tmp_path):
    eos = (b"tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 3))
    _refused(tmp_path, _typed_gguf([ARCH, TOKENS, eos]), "eos_token_id 3 is outside the vocabulary of 3 tokens")

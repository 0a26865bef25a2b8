"""Validate a GGUF file in Python, with bounds checks, before any native code reads it.

llama.cpp's loader has had several CVEs on crafted headers (tensor offset + size past the end of
the file, absurd counts, huge strings). This reader walks the header the way the spec lays it
out and checks every length and offset against the file size; it never allocates by a count it
has not bounded. Runtime-only: no torch, no transformers, no numpy.
"""

from __future__ import annotations

import struct
from pathlib import Path

from edgeq.errors import UsageError
from edgeq.spec import GGUF_MAGIC, GGUF_VERSIONS

# GGUF metadata value types → struct format (scalars); 8 = string, 9 = array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4
_MAX_COUNT = 1 << 24  # tensors, keys or array items: far beyond any real model
_DEFAULT_ALIGNMENT = 32


def _bad(path: Path, what: str) -> UsageError:
    return UsageError(f"not a valid GGUF file: {what}", str(path), "re-export or re-download the model")


class _Reader:
    def __init__(self, path: Path, data: bytes, size: int):
        self.path, self.data, self.size, self.pos = path, data, size, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _bad(self.path, f"header runs past the end of the file at byte {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > self.size:
            raise _bad(self.path, f"string length {n} exceeds the file size")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int, depth: int = 0):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY and depth == 0:
            itype, count = self.unpack("<I"), self.unpack("<Q")
            if count > self.size:
                raise _bad(self.path, f"array of {count} items exceeds the file size")
            return [self.value(itype, depth + 1) for _ in range(count)]
        raise _bad(self.path, f"unknown metadata value type {vtype}")


def check_gguf(path: str | Path) -> dict:
    """Raise UsageError (one line) unless `path` is a structurally sound GGUF; return its header."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    if not path.is_file():
        raise UsageError("file not found", str(path), "check the path")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24 or head[:4] != GGUF_MAGIC:
            raise _bad(path, "bad magic (expected 'GGUF')")
        version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
        if version not in GGUF_VERSIONS:
            raise _bad(path, f"unsupported version {version} (supported: {', '.join(map(str, GGUF_VERSIONS))})")
        if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
            raise _bad(path, f"absurd counts ({n_tensors} tensors, {n_kv} metadata keys)")
        f.seek(0)
        # The header of a real model is a few MB (vocabularies); read at most 256 MiB of it.
        r = _Reader(path, f.read(min(size, 256 << 20)), size)
    r.pos = 24
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.unpack("<I"))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.unpack("<I")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise _bad(path, f"tensor {name!r} has {n_dims} dimensions")
        dims = [r.unpack("<Q") for _ in range(n_dims)]
        ttype, offset = r.unpack("<I"), r.unpack("<Q")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise _bad(path, f"tensor {name!r} has unknown type {ttype}") from None
        n = 1
        for d in dims:
            if d == 0 or d > 1 << 40:
                raise _bad(path, f"tensor {name!r} has dimension {d}")
            n *= d
        if dims[0] % block:
            raise _bad(path, f"tensor {name!r}: row of {dims[0]} is not a multiple of its block size {block}")
        tensors.append((name, dims, ttype, offset, n // block * type_size))
    alignment = int(meta.get("general.alignment", _DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise _bad(path, f"general.alignment {alignment} is not a power of two")
    data_start = -(-r.pos // alignment) * alignment
    for name, _dims, _t, offset, nbytes in tensors:
        if offset % alignment or data_start + offset + nbytes > size:
            raise _bad(path, f"tensor {name!r} (offset {offset}, {nbytes} bytes) lies past the end of the file")
    return {"version": version, "metadata": meta, "tensors": len(tensors), "data_bytes": size - data_start}

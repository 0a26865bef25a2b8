"""Validate a GGUF file in Python, with bounds checks, before any native code reads it.

llama.cpp's loader has had several CVEs on crafted headers (tensor offset + size past the end of
the file, absurd counts, huge strings). This reader walks the header the way the spec lays it
out and checks every length and offset against the file size; it never allocates by a count it
has not bounded. Then every metadata key llama.cpp reads must have the exact type llama.cpp
expects (KEY_TYPES), the vocabulary arrays their element type and the vocabulary's length, and
every special token id must lie inside the vocabulary. Runtime-only: no torch, no transformers,
no numpy; the format's names and types come from gguf-py's constants.
"""

from __future__ import annotations

import array
import struct
import sys
from pathlib import Path

from edgeq.errors import UsageError
from edgeq.spec import ADAPTER_BASE_KEY, GGUF_MAGIC, GGUF_SOURCE_KEY, GGUF_VERSIONS

_MAX_DIMS = 4
_MAX_TENSORS = 1 << 18  # the largest real models have a few thousand tensors
_MAX_KEYS = 1 << 16  # and a few hundred metadata keys
# Strings in all metadata arrays together: a 262k-token vocabulary and its merges are under a million. Each
# string costs a Python step (its length is read, its bytes skipped), so this bounds the check's time on a crafted
# file to about a second; every other array is read in one step however long it is.
_MAX_STRINGS = 1 << 21
_ARRAY_CODES = {"<B": "B", "<b": "b", "<H": "H", "<h": "h", "<I": "I", "<i": "i", "<f": "f", "<?": "B"}
_ARRAY_CODES |= {"<Q": "Q", "<q": "q", "<d": "d"}
_DEFAULT_ALIGNMENT = 32


def _types():
    from gguf.constants import GGUFValueType as T  # deferred: gguf-py's import costs the CLI's start-up

    scalars = {
        T.UINT8: "<B",
        T.INT8: "<b",
        T.UINT16: "<H",
        T.INT16: "<h",
        T.UINT32: "<I",
        T.INT32: "<i",
        T.FLOAT32: "<f",
        T.BOOL: "<?",
        T.UINT64: "<Q",
        T.INT64: "<q",
        T.FLOAT64: "<d",
    }
    return T, scalars


def key_types() -> dict[str, tuple]:
    """Key → the value type llama.cpp requires ((ARRAY, element type) for arrays). `{arch}` is the model's."""
    from gguf.constants import Keys  # deferred: gguf-py's import costs the CLI's start-up

    T, _ = _types()
    u32, f32, string = (T.UINT32,), (T.FLOAT32,), (T.STRING,)
    tok = Keys.Tokenizer
    table = {
        Keys.General.ARCHITECTURE: string,
        Keys.General.ALIGNMENT: u32,
        Keys.General.FILE_TYPE: u32,
        tok.MODEL: string,
        tok.PRE: string,
        tok.LIST: (T.ARRAY, T.STRING),
        tok.TOKEN_TYPE: (T.ARRAY, T.INT32),
        tok.SCORES: (T.ARRAY, T.FLOAT32),
        tok.MERGES: (T.ARRAY, T.STRING),
        tok.ADD_BOS: (T.BOOL,),
        tok.CHAT_TEMPLATE: string,
        Keys.LLM.CONTEXT_LENGTH: u32,
        Keys.LLM.EMBEDDING_LENGTH: u32,
        Keys.LLM.BLOCK_COUNT: u32,
        Keys.LLM.VOCAB_SIZE: u32,
        Keys.Rope.DIMENSION_COUNT: u32,
        Keys.Attention.LAYERNORM_RMS_EPS: f32,
        Keys.Rope.FREQ_BASE: f32,
    }
    for name in TOKEN_ID_KEYS:
        table[getattr(tok, name)] = u32
    return table


# Special token ids llama.cpp looks up in the vocabulary (gguf-py's Keys.Tokenizer names).
TOKEN_ID_KEYS = ("BOS_ID", "EOS_ID", "UNK_ID", "PAD_ID", "SEP_ID", "EOT_ID", "EOM_ID", "MASK_ID")
# Per-layer keys llama.cpp reads as one UINT32 or an array of them.
_PER_LAYER = ("FEED_FORWARD_LENGTH", "HEAD_COUNT", "HEAD_COUNT_KV")


def _bad(path: Path, what: str) -> UsageError:
    return UsageError(f"not a valid GGUF file: {what}", str(path), "re-export or re-download the model")


class StringArray(int):
    """A metadata array of strings, as the check keeps it: how many (len() works as on a list)."""

    def __len__(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"<{int(self)} strings>"


class _Reader:
    def __init__(self, path: Path, data: bytes, size: int):
        self.path, self.data, self.size, self.pos = path, data, size, 0
        self.T, self.scalars = _types()
        self.strings_left = _MAX_STRINGS

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

    def value(self, vtype: int, depth: int = 0) -> tuple[tuple, object]:
        """(type signature, value): (T,) for a scalar or string, (ARRAY, element type) for an array."""
        T = self.T
        if vtype in self.scalars:
            return (T(vtype),), self.unpack(self.scalars[T(vtype)])
        if vtype == T.STRING:
            return (T.STRING,), self.string()
        if vtype == T.ARRAY and depth == 0:
            itype, count = self.unpack("<I"), self.unpack("<Q")
            if count > self.size:
                raise _bad(self.path, f"array of {count} items exceeds the file size")
            if itype in self.scalars:
                return (T.ARRAY, T(itype)), self.scalar_array(self.scalars[T(itype)], count)
            if itype == T.STRING:
                return (T.ARRAY, T.STRING), self.string_array(count)
            raise _bad(self.path, f"array of unknown or nested type {itype}")
        raise _bad(self.path, f"unknown metadata value type {vtype}")

    def scalar_array(self, fmt: str, count: int) -> array.array:
        """`count` numbers in one read (an array of a billion bytes costs what reading them costs)."""
        out = array.array(_ARRAY_CODES[fmt])
        out.frombytes(self.take(count * out.itemsize))
        if sys.byteorder == "big":
            out.byteswap()
        return out

    def string_array(self, count: int) -> StringArray:
        """Walk `count` strings, checking each length against the file; their text is not kept (the checks need
        only how many there are, and a vocabulary's text is llama.cpp's to read)."""
        self.strings_left -= count
        if self.strings_left < 0:
            raise _bad(self.path, f"more than {_MAX_STRINGS} strings in the metadata")
        data, pos, end = self.data, self.pos, len(self.data)
        length = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > end:
                raise _bad(self.path, f"header runs past the end of the file at byte {pos}")
            pos += 8 + length(data, pos)[0]
            if pos > end:
                raise _bad(self.path, f"a string runs past the end of the file at byte {pos}")
        self.pos = pos
        return StringArray(count)


def _type_name(sig: tuple) -> str:
    return sig[0].name if len(sig) == 1 else f"ARRAY of {sig[1].name}"


def check_metadata(path: Path, meta: dict, sigs: dict) -> None:
    """Every key llama.cpp reads has its exact type; the vocabulary is consistent; token ids lie inside it."""
    from gguf.constants import Keys  # deferred: gguf-py's import costs the CLI's start-up

    T, _ = _types()
    arch = meta.get(Keys.General.ARCHITECTURE)
    wanted = {k.replace("{arch}", str(arch)): t for k, t in key_types().items()}
    for key, sig in sigs.items():
        if key in wanted and sig != wanted[key]:
            raise _bad(path, f"metadata {key} is {_type_name(sig)}, llama.cpp reads {_type_name(wanted[key])}")
    for name in _PER_LAYER:
        key = getattr(Keys.LLM if name == "FEED_FORWARD_LENGTH" else Keys.Attention, name).replace("{arch}", str(arch))
        if key in sigs and sigs[key] not in ((T.UINT32,), (T.ARRAY, T.UINT32), (T.ARRAY, T.INT32)):
            raise _bad(path, f"metadata {key} is {_type_name(sigs[key])}, llama.cpp reads UINT32 or an array of them")
    tokens = meta.get(Keys.Tokenizer.LIST)
    if tokens is None:
        return
    for key in (Keys.Tokenizer.TOKEN_TYPE, Keys.Tokenizer.SCORES):
        if key in meta and len(meta[key]) != len(tokens):
            raise _bad(path, f"{key} has {len(meta[key])} entries for {len(tokens)} tokens")
    for name in TOKEN_ID_KEYS:
        key = getattr(Keys.Tokenizer, name)
        if key in meta and not 0 <= meta[key] < len(tokens):
            raise _bad(path, f"{key} {meta[key]} is outside the vocabulary of {len(tokens)} tokens")


_CHECKED: dict[tuple, dict] = {}  # (path, size, mtime_ns) → header: a file is read once while it is unchanged
_CHECKED_MAX = 8


def check_gguf(path: str | Path) -> dict:
    """Raise UsageError (one line) unless `path` is a structurally sound GGUF; return its header."""
    path = Path(path)
    if not path.is_file():
        raise UsageError("file not found", str(path), "check the path")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CHECKED:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.pop(next(iter(_CHECKED)))
        _CHECKED[key] = _check(path, st.st_size)
    return _CHECKED[key]


def _check(path: Path, size: int) -> dict:
    # deferred: gguf-py's import costs the CLI's start-up
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24 or head[:4] != GGUF_MAGIC:
            raise _bad(path, "bad magic (expected 'GGUF')")
        version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
        if version not in GGUF_VERSIONS:
            raise _bad(path, f"unsupported version {version} (supported: {', '.join(map(str, GGUF_VERSIONS))})")
        if n_tensors > _MAX_TENSORS or n_kv > _MAX_KEYS:
            raise _bad(path, f"absurd counts ({n_tensors} tensors, {n_kv} metadata keys)")
        f.seek(0)
        # The header of a real model is a few MB (vocabularies); read at most 256 MiB of it.
        r = _Reader(path, f.read(min(size, 256 << 20)), size)
    r.pos = 24
    meta, sigs = {}, {}
    for _ in range(n_kv):
        key = r.string()
        sigs[key], meta[key] = r.value(r.unpack("<I"))
    check_metadata(path, meta, sigs)
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
    infos = [
        {"name": n, "dims": d, "type": GGMLQuantizationType(t).name, "start": data_start + o, "bytes": b}
        for n, d, t, o, b in tensors
    ]
    return {
        "version": version,
        "metadata": meta,
        "tensors": len(tensors),
        "data_bytes": size - data_start,
        "data_start": data_start,
        "tensor_info": infos,  # name, dims (ggml order), type name, absolute start, bytes: checked to lie in the file
    }


def check_adapter(base: dict, adapter: dict, where: str) -> None:
    """A GGUF LoRA adapter (check_gguf's header) against the base GGUF it is to be applied to, before llama.cpp
    reads either: the adapter's type and architecture, every `W.lora_a` / `W.lora_b` pair shaped for a weight W of
    the base (ggml order: a [in, r], b [r, out], W [in, out]), and, where both carry edgeq's fingerprints, the same
    base by content."""
    am, bm = adapter["metadata"], base["metadata"]

    def bad(what: str, fix: str = "export the adapter for this base (edgeq export --adapter RUN --model BASE)"):
        return UsageError(f"not an adapter for this base: {what}", where, fix)

    if am.get("general.type") != "adapter" or am.get("adapter.type") != "lora":
        raise bad("its general.type / adapter.type are not adapter / lora", "pass a GGUF LoRA adapter")
    if am.get("general.architecture") != bm.get("general.architecture"):
        raise bad(f"architecture {am.get('general.architecture')!r}, the base's {bm.get('general.architecture')!r}")
    mine, theirs = am.get(ADAPTER_BASE_KEY), bm.get(GGUF_SOURCE_KEY)
    if mine and theirs and mine != theirs:
        raise bad(f"trained on base {str(mine)[:12]}, the base GGUF was written from {str(theirs)[:12]}")
    weights = {t["name"]: t["dims"] for t in base["tensor_info"]}
    parts = {t["name"]: t["dims"] for t in adapter["tensor_info"]}
    names = {n.rsplit(".", 1)[0] for n in parts}
    if not names:
        raise bad("it has no tensors", "pass a GGUF LoRA adapter")
    for name in sorted(names):
        a, b, w = parts.get(f"{name}.lora_a"), parts.get(f"{name}.lora_b"), weights.get(name)
        if a is None or b is None:
            raise bad(f"{name} lacks its lora_a or lora_b")
        if w is None:
            raise bad(f"the base has no tensor {name}")
        if len(a) != 2 or len(b) != 2 or len(w) != 2 or a[0] != w[0] or b[1] != w[1] or a[1] != b[0]:
            raise bad(f"{name}: lora_a {a} and lora_b {b} do not fit the base's {w}")

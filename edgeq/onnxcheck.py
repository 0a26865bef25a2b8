"""Validate an ONNX Runtime GenAI folder in Python before ONNX Runtime opens it.

A genai_config.json can name a native library to load (`custom_ops_library`) and model files by
any path; an .onnx file can point its tensors' external data at any path (CVE-2024-27318 was a
traversal of this kind); session options can make the runtime write a profile or a compiled model
anywhere. edgeq refuses, before anything loads: a folder with anything at any depth that is not a
regular file inside it (io.check_folder), custom op libraries, session options outside an allow-list,
provider options that name files, file names that are absolute or leave the folder, and external-data
locations that leave the folder. Runtime-only: no onnx package needed (the protobuf is walked here,
as far as external data, in any field order).
"""

from __future__ import annotations

import mmap
import re
from pathlib import Path

from edgeq.errors import UsageError
from edgeq.io import check_folder, read_json

CONFIG = "genai_config.json"
_FIX = "use a folder written by edgeq export --format onnx"

# genai_config's decoder.session_options that touch no file: every other key is refused. Among those left out:
# custom_ops_library (loads a native library), enable_profiling (writes a trace file under a prefix it names),
# ep_context_file_path / ep_context_enable (writes a compiled model), config_entries (free-form ONNX Runtime
# settings, some of which name files).
SESSION_OPTIONS = frozenset(
    {
        "log_id",
        "log_severity_level",
        "intra_op_num_threads",
        "inter_op_num_threads",
        "enable_cpu_mem_arena",
        "enable_mem_pattern",
        "graph_optimization_level",
        "execution_mode",
        "disable_cpu_ep_fallback",
        "disable_quant_qdq",
        "enable_quant_qdq_cleanup",
        "use_env_allocators",
        "provider_options",
    }
)
PROVIDERS = frozenset({"cuda", "dml", "webgpu", "cpu"})  # execution providers edgeq lets a model folder configure
# A provider option whose name says it names a file or a folder: an engine cache, a dump, a backend library.
_FILE_OPTION = re.compile(r"path|dir|file|librar|cache|dump|profil|context", re.IGNORECASE)
# A config key that names a file the runtime opens: each must be a file inside the folder.
_FILE_KEY = re.compile(r"filename|file_name|_path$|^path$", re.IGNORECASE)


def _refuse(path: Path, what: str, fix: str = _FIX) -> UsageError:
    return UsageError(what, str(path), fix)


def _inside(folder: Path, name: str) -> bool:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or not name or "\0" in name:
        return False
    return (folder / p).resolve().is_relative_to(folder.resolve())


def _walk(obj, key_path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():  # a key before what it holds: session_options is judged as a whole first
            yield key_path, k, v
            yield from _walk(v, f"{key_path}.{k}" if key_path else k)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{key_path}[{i}]")


# ---------------------------------------------------------------------------------------------
# The ONNX protobuf, read only as far as external data: any field order, any repetition, bounded depth.
# Message → {field number: the message type it holds}. Field numbers are onnx.proto's.
_MESSAGES = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
    "entry": {},  # StringStringEntryProto: 1 key, 2 value
}
_MAX_DEPTH = 64  # subgraphs inside attributes inside subgraphs …: far beyond any real model


class _Bad(Exception):
    pass


def _varint(data, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 64:
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7
    raise _Bad(f"a truncated or overlong varint at byte {pos}")


def _fields(data, pos: int, end: int):
    """(field number, start, stop) of each length-delimited field in data[pos:end]; other wire types skipped."""
    while pos < end:
        tag, pos = _varint(data, pos, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise _Bad(f"field number 0 at byte {pos}")
        if wire == 0:
            _, pos = _varint(data, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            n, pos = _varint(data, pos, end)
            if pos + n > end:
                raise _Bad(f"a field of {n} bytes runs past its message at byte {pos}")
            yield number, pos, pos + n
            pos += n
        else:
            raise _Bad(f"wire type {wire} (groups or garbage) at byte {pos}")
        if pos > end:
            raise _Bad(f"a field runs past its message at byte {end}")


def _locations(data, kind: str, pos: int, end: int, depth: int, out: list[str]) -> None:
    if depth > _MAX_DEPTH:
        raise _Bad(f"messages nested more than {_MAX_DEPTH} deep")
    if kind == "entry":
        keys, values = [], []
        for number, a, b in _fields(data, pos, end):
            if number in (1, 2):
                (keys if number == 1 else values).append(data[a:b].decode("utf-8", errors="replace"))
        if "location" in keys:  # every value counts: a reader may take the first or the last
            out.extend(values or [""])
        return
    holds = _MESSAGES[kind]
    for number, a, b in _fields(data, pos, end):
        if number in holds:
            _locations(data, holds[number], a, b, depth + 1, out)


def external_locations(onnx_file: Path) -> list[str]:
    """Every external-data location an .onnx file names, in any tensor at any depth (initializers, sparse
    initializers, attribute tensors, subgraphs, functions). Linear in the file's size; raises UsageError on a
    file that is not a well-formed protobuf."""
    size = onnx_file.stat().st_size
    if size == 0:
        raise _refuse(onnx_file, "an empty .onnx file")
    with open(onnx_file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        out: list[str] = []
        try:
            _locations(data, "model", 0, size, 0, out)  # mmap indexes to ints and slices to bytes: no copy
        except _Bad as e:
            raise _refuse(onnx_file, f"not a valid ONNX file: {e}") from None
        return out


# ---------------------------------------------------------------------------------------------
# genai_config.json


def _custom_ops(cfg_path: Path, name: str, value) -> UsageError:
    return _refuse(
        cfg_path,
        f"{name} asks ONNX Runtime to load a native library ({str(value)[:80]!r}); edgeq never loads code from a model",
        "remove the key, or use a model without custom operators",
    )


def _check_session_options(cfg_path: Path, name: str, options) -> None:
    if not isinstance(options, dict):
        raise _refuse(cfg_path, f"{name} must be a mapping")
    for key, value in options.items():
        if key == "custom_ops_library":
            raise _custom_ops(cfg_path, f"{name}.{key}", value)
        if key not in SESSION_OPTIONS:
            raise _refuse(
                cfg_path,
                f"{name}.{key} is not an option edgeq lets a model folder set (it can load, read or write files)",
                f"remove it; allowed: {', '.join(sorted(SESSION_OPTIONS))}",
            )
        if key != "provider_options":
            continue
        for i, provider in enumerate(value if isinstance(value, list) else [value]):
            if not isinstance(provider, dict):
                raise _refuse(cfg_path, f"{name}.provider_options[{i}] must be a mapping")
            for pname, popts in provider.items():
                if pname.lower() not in PROVIDERS:
                    raise _refuse(
                        cfg_path,
                        f"{name}.provider_options[{i}] names provider {pname[:40]!r}",
                        f"edgeq runs {', '.join(sorted(PROVIDERS))}; remove it",
                    )
                opts = popts.get("options", popts) if isinstance(popts, dict) else popts
                items = opts.items() if isinstance(opts, dict) else []
                if isinstance(opts, list):  # [{"name": …, "value": …}]
                    items = [(o.get("name"), o.get("value")) for o in opts if isinstance(o, dict)]
                for oname, _ in items:
                    if not isinstance(oname, str) or _FILE_OPTION.search(oname):
                        raise _refuse(
                            cfg_path,
                            f"{name}.provider_options[{i}].{pname} option {str(oname)[:40]!r} names a file or folder",
                            "remove it: a model folder may not point the runtime at files",
                        )


def check_onnx_folder(folder: Path) -> Path:
    """Raise UsageError (one line) unless `folder` is an ONNX GenAI folder that stays inside itself."""
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        raise _refuse(
            folder, f"not an ONNX Runtime GenAI model folder (no {CONFIG})", "point at the folder edgeq export wrote"
        )
    check_folder(folder, "ONNX model folder")
    cfg = read_json(cfg_path, CONFIG, _FIX, 4 << 20)
    decoder = cfg.get("model", {}).get("decoder") if isinstance(cfg, dict) else None
    if not isinstance(decoder, dict) or not isinstance(decoder.get("filename"), str):
        raise _refuse(cfg_path, "no model.decoder.filename in the config")
    onnx_files = []
    for where, key, value in _walk(cfg):
        name = f"{where}.{key}" if where else key
        if key == "custom_ops_library":
            raise _custom_ops(cfg_path, name, value)
        if key == "session_options":
            _check_session_options(cfg_path, name, value)
        elif _FILE_KEY.search(key):
            if not isinstance(value, str) or not _inside(folder, value):
                raise _refuse(cfg_path, f"{name} {str(value)[:80]!r} is not a file inside the model folder")
            if key == "filename":
                onnx_files.append(folder / value)
    for f in sorted(set(onnx_files) | set(folder.rglob("*.onnx"))):
        if not f.is_file():
            raise _refuse(f, "a model file named by the config is missing")
        for loc in external_locations(f):
            if not _inside(folder, loc):
                raise _refuse(f, f"external data location {loc[:80]!r} is outside the model folder")
    return folder

"""Validate an ONNX Runtime GenAI folder in Python before ONNX Runtime opens it.

A genai_config.json can name a native library to load (`custom_ops_library`) and model files by
any path; an .onnx file can point its tensors' external data at any path (CVE-2024-27318 was a
traversal of this kind). edgeq refuses, before anything loads: custom op libraries, file names
that are absolute or leave the folder, external-data locations that leave the folder, and links
inside the folder that point out of it. Runtime-only: no onnx package needed (the external-data
entries are found in the protobuf bytes directly).
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeq.errors import UsageError

CONFIG = "genai_config.json"
# protobuf StringStringEntryProto {key: "location", value: …}: field 1 (len 8) "location", then field 2
_LOCATION = b"\x0a\x08location\x12"


def _refuse(path: Path, what: str, fix: str = "use a folder written by edgeq export --format onnx") -> UsageError:
    return UsageError(what, str(path), fix)


def _inside(folder: Path, name: str) -> bool:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or not name:
        return False
    return (folder / p).resolve().is_relative_to(folder.resolve())


def _walk(obj, key_path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{key_path}.{k}" if key_path else k)
            yield key_path, k, v
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{key_path}[{i}]")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7
    return -1, pos


def external_locations(onnx_file: Path) -> list[str]:
    """Every external-data location an .onnx file names."""
    data = onnx_file.read_bytes()
    out, pos = [], data.find(_LOCATION)
    while pos != -1:
        n, start = _varint(data, pos + len(_LOCATION))
        out.append(data[start : start + n].decode("utf-8", errors="replace") if n >= 0 else "")
        pos = data.find(_LOCATION, start)
    return out


def check_onnx_folder(folder: Path) -> Path:
    """Raise UsageError (one line) unless `folder` is an ONNX GenAI folder that stays inside itself."""
    cfg_path = folder / CONFIG
    if not cfg_path.is_file():
        raise _refuse(
            folder, f"not an ONNX Runtime GenAI model folder (no {CONFIG})", "point at the folder edgeq export wrote"
        )
    for f in folder.rglob("*"):
        if f.is_symlink() and not f.resolve().is_relative_to(folder.resolve()):
            raise _refuse(f, "a link that points out of the model folder", "copy the file into the folder instead")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise _refuse(cfg_path, f"{CONFIG} is not valid JSON") from None
    decoder = cfg.get("model", {}).get("decoder") if isinstance(cfg, dict) else None
    if not isinstance(decoder, dict) or not isinstance(decoder.get("filename"), str):
        raise _refuse(cfg_path, "no model.decoder.filename in the config")
    onnx_files = []
    for where, key, value in _walk(cfg):
        name = f"{where}.{key}" if where else key
        if key == "custom_ops_library":
            raise _refuse(
                cfg_path,
                f"{name} asks ONNX Runtime to load a native library ({value!r}); edgeq never loads code from a model",
                "remove the key, or use a model without custom operators",
            )
        if key == "filename":
            if not isinstance(value, str) or not _inside(folder, value):
                raise _refuse(cfg_path, f"{name} {value!r} is not a file inside the model folder")
            onnx_files.append(folder / value)
    for f in sorted(set(onnx_files) | set(folder.glob("*.onnx"))):
        if not f.is_file():
            raise _refuse(f, "a model file named by the config is missing")
        for loc in external_locations(f):
            if not _inside(folder, loc):
                raise _refuse(f, f"external data location {loc!r} is outside the model folder")
    return folder

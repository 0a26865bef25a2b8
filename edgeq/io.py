"""The one place that writes artifacts, hashes files, checks disk and loads weights safely.

Every write is atomic: a temp file (or directory) beside the target, fsync, rename. A failure
leaves the previous output intact and no temp behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgeq.errors import EdgeqError, UsageError

_TMP_PREFIX = ".edgeq-tmp-"
OUTPUT_MARK = ".edgeq-output"  # written into every directory edgeq creates: what may be replaced with --force


FILE_MARK = "written by edgeq"  # inside every file edgeq writes to a user's path: a JSON key, a GGUF key, a comment
_MARK_SCAN = 64 << 10  # the mark sits in a file's first bytes (a JSON's first key, a GGUF's second metadata key)


def edgeq_wrote(path: str | os.PathLike) -> bool:
    """Whether edgeq marked `path` as its own: a directory by its OUTPUT_MARK, a file by FILE_MARK in its head."""
    path = Path(path)
    if path.is_symlink():
        return False
    if path.is_dir():
        return (path / OUTPUT_MARK).is_file()
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return FILE_MARK.encode() in f.read(_MARK_SCAN)


def check_not_input(path: str | os.PathLike, inputs, option: str = "--out") -> None:
    """Refuse an output path that is, holds or lies inside one of `inputs` (None entries skipped)."""
    target = Path(path).resolve()
    for item in inputs:
        if item is None:
            continue
        item = Path(item).resolve()
        if item == target or item.is_relative_to(target) or target.is_relative_to(item):
            raise UsageError(
                f"{option} would replace, hold or lie inside an input of this command ({item})",
                str(path),
                f"choose another {option}",
            )


def claim_output(path: str | os.PathLike, inputs=(), force: bool = False, option: str = "--out") -> Path:
    """The one rule for every path a command writes (`--out`, `--points`, a build folder), checked before any work.

    It may not be, hold or lie inside an input of the same command (`inputs`; None entries are skipped), with or
    without --force. An existing path is replaced only with --force, and then only if edgeq marked it as its own
    (edgeq_wrote): a file or folder edgeq did not write is never replaced."""
    path = Path(path)
    check_not_input(path, inputs, option)
    if path.exists() or path.is_symlink():
        if not force:
            raise UsageError("output exists", str(path), f"pass --force to replace it, or choose another {option}")
        if not edgeq_wrote(path):
            raise UsageError(
                "not written by edgeq: --force replaces only what edgeq wrote "
                f"(a folder holding {OUTPUT_MARK}, a file carrying the mark {FILE_MARK!r})",
                str(path),
                f"remove it yourself, or choose another {option}",
            )
    return path


def check_replaceable(path: str | os.PathLike, protect) -> None:
    """Refuse to replace `path` unless edgeq wrote it and it is not, holds or lies inside an input (`protect`)."""
    claim_output(path, protect, force=True)


def remove_output(path: str | os.PathLike, protect=()) -> None:
    """Delete a directory edgeq wrote (see check_replaceable); anything else is refused."""
    check_replaceable(path, protect)
    shutil.rmtree(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temp file beside `path`; on success fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual mode
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False, protect=None) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on success it replaces `path` in one rename.

    With force, an existing `path` is kept until the new one is complete, then swapped out. A user's
    --out passes the command's inputs as `protect`: then only a directory edgeq wrote is replaced
    (check_replaceable); edgeq's own caches pass None. The new directory carries OUTPUT_MARK.
    """
    path = Path(path)
    if protect is not None:
        claim_output(path, protect, force)
    elif path.exists() and not force:
        raise UsageError("output exists", str(path), "pass --force to replace it, or choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        (tmp / OUTPUT_MARK).write_text("written by edgeq; `--force` may replace this directory\n")
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f"{_TMP_PREFIX}old-{path.name}-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            _remove(old)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False, protect=None) -> Iterator[Path]:
    """Yield a temp path beside `path` for a writer that opens files itself (native code);
    on success fsync it and rename it over `path`. An existing `path` needs force and survives failure.
    A user's --out passes the command's inputs as `protect` (claim_output's rule); edgeq's own caches pass None."""
    path = Path(path)
    if protect is not None:
        claim_output(path, protect, force)
    elif path.exists() and not force:
        raise UsageError("output exists", str(path), "pass --force to replace it, or choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock; a second holder waits (the cache) until the first is done."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


MAX_FOLDER_ENTRIES = 100_000  # files and folders in one model, adapter or ONNX folder: far beyond any real one


def check_folder(folder: str | os.PathLike, what: str = "model folder") -> Path:
    """Refuse `folder` unless everything in it, at any depth, is a regular file or a folder inside it.

    Libraries read more of a folder than its top level (transformers reads additional_chat_templates/, the ONNX
    builder copies whatever the tokenizer names), so the whole tree is walked, before any library opens it, with
    links never followed. A link is accepted only where it resolves to a regular file or folder inside the folder,
    or, for a Hugging Face cache snapshot (…/snapshots/REV), inside that repository's blobs/. Anything else (a link
    out, a device, a FIFO, a socket) is refused: it could carry another file into an artifact, or block a read."""
    folder = Path(folder)
    root = folder.resolve()
    roots = [root]
    if folder.parent.name == "snapshots":  # the hub cache links each file to ../../blobs/<hash>
        roots.append((folder.parent.parent / "blobs").resolve())
    fix = "copy the file into the folder: edgeq never follows links out of a model"
    seen = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            seen += 1
            if seen > MAX_FOLDER_ENTRIES:
                raise UsageError(f"more than {MAX_FOLDER_ENTRIES} entries in the {what}", str(folder))
            entry = Path(dirpath) / name
            st = entry.lstat()
            if stat.S_ISLNK(st.st_mode):
                target = entry.resolve()
                if not any(target.is_relative_to(r) for r in roots):
                    raise UsageError(
                        f"{entry.relative_to(folder)} is a link out of the {what} (to {target})", str(folder), fix
                    )
                if not (target.is_file() or target.is_dir()):
                    raise UsageError(f"{entry.relative_to(folder)} is a link to nothing readable", str(folder), fix)
            elif not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise UsageError(
                    f"{entry.relative_to(folder)} is not a regular file (a device, FIFO or socket)",
                    str(folder),
                    "remove it: a model folder holds files only",
                )
    return folder


MAX_NUMBER_CHARS = 40  # a JSON number longer than this is a typo or an attack, never a figure edgeq reads


def _json_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(text)} digits")
    return int(text)


def _json_float(text: str) -> float:
    value = float(text) if len(text) <= MAX_NUMBER_CHARS else math.inf
    if not math.isfinite(value):
        raise ValueError(f"number {text[:24]}{'…' if len(text) > 24 else ''} is out of range")
    return value


def _json_constant(text: str):
    raise ValueError(f"{text} is not a number JSON allows")


def parse_json(text: str | bytes):
    """json.loads for untrusted text: finite numbers of at most MAX_NUMBER_CHARS characters, no NaN or Infinity,
    bounded nesting. Every problem is a ValueError with a one-line reason."""
    try:
        return json.loads(text, parse_int=_json_int, parse_float=_json_float, parse_constant=_json_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 (byte {e.start})") from None


def read_json(path: str | os.PathLike, what: str = "JSON file", fix: str | None = None, max_bytes: int = 64 << 20):
    """Read an untrusted JSON file: a regular file of at most `max_bytes`, parsed by parse_json. One UsageError
    naming the file for every failure."""
    path = Path(path)
    try:
        if not path.is_file():
            raise UsageError(f"{what} not found", str(path), fix or "check the path")
        if path.stat().st_size > max_bytes:
            raise UsageError(f"{what} is larger than {max_bytes >> 20} MiB", str(path), fix)
        return parse_json(path.read_bytes())
    except ValueError as e:
        raise UsageError(f"{what} is not valid JSON ({e})", str(path), fix) from None
    except OSError as e:
        raise UsageError(f"{what} cannot be read ({e.strerror})", str(path), fix) from None


_LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


def check_safetensors(path: str | os.PathLike) -> None:
    """Refuse a weights file that is an LFS pointer or a truncated/lying safetensors, before loading it."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if (head + f.read(len(_LFS_POINTER) - 8)).startswith(_LFS_POINTER):
            raise UsageError("a Git LFS pointer, not weights", str(path), "run `git lfs pull` in the model repository")
        if len(head) < 8:
            raise UsageError("truncated safetensors (no header)", str(path), "re-download or re-save the weights")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, 100 << 20):
            raise UsageError(
                f"safetensors header of {n} bytes does not fit the file",
                str(path),
                "the file is truncated or not safetensors; re-download it",
            )
        f.seek(8)
        try:
            header = parse_json(f.read(n))
        except ValueError as e:
            raise UsageError(
                f"safetensors header is not valid JSON ({e})", str(path), "re-download the weights"
            ) from None
    end = 0
    for name, t in header.items() if isinstance(header, dict) else [("", None)]:
        if name == "__metadata__":
            continue
        offsets = t.get("data_offsets") if isinstance(t, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
            and isinstance(t.get("shape"), list)
            and isinstance(t.get("dtype"), str)
        ):
            raise UsageError(
                f"safetensors header entry {str(name)[:60]!r} has no valid dtype, shape and data_offsets",
                str(path),
                "re-download or re-save the weights",
            )
        end = max(end, offsets[1])
    if 8 + n + end > size:
        raise UsageError(
            f"truncated safetensors: tensors need {8 + n + end} bytes, the file has {size}",
            str(path),
            "re-download or re-save the weights",
        )


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_free_disk(directory: str | os.PathLike, need_bytes: int, what: str) -> None:
    """Refuse to start a step that would run out of disk half-way."""
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise EdgeqError(
            f"not enough free disk for {what}: need {need_bytes / 2**20:.0f} MiB, have {free / 2**20:.0f} MiB",
            str(probe),
            "free some space or choose another output directory",
        )

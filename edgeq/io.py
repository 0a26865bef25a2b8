"""The one place that writes artifacts, hashes files, checks disk and loads weights safely.

Every write is atomic: a temp file (or directory) beside the target, fsync, rename. A failure
leaves the previous output intact and no temp behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgeq.errors import EdgeqError, UsageError

_TMP_PREFIX = ".edgeq-tmp-"
OUTPUT_MARK = ".edgeq-output"  # written into every directory edgeq creates: what may be replaced with --force


def check_replaceable(path: str | os.PathLike, protect) -> None:
    """Refuse to replace `path` unless edgeq wrote it (a directory: its OUTPUT_MARK) and it is not an input,
    does not hold one, and does not lie inside one. `protect`: the inputs of the command."""
    path = Path(path).resolve()
    for item in protect:
        item = Path(item).resolve()
        if item == path or path in item.parents or (item in path.parents and path.exists()):
            raise UsageError(
                f"--out would replace an input of this command ({item})", str(path), "choose another --out"
            )
    if path.is_dir() and not (path / OUTPUT_MARK).is_file():
        raise UsageError(
            f"not written by edgeq (no {OUTPUT_MARK} marker): edgeq replaces only what it wrote",
            str(path),
            "remove it yourself, or choose another --out",
        )


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
    if path.exists() and not force:
        raise UsageError("output exists", str(path), "pass --force to replace it, or choose another --out")
    if path.exists() and protect is not None:
        check_replaceable(path, protect)
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
def atomic_path(path: str | os.PathLike, force: bool = False, protect=()) -> Iterator[Path]:
    """Yield a temp path beside `path` for a writer that opens files itself (native code);
    on success fsync it and rename it over `path`. An existing `path` needs force and survives failure;
    it may not be, or lie inside, one of the inputs in `protect`."""
    path = Path(path)
    if path.exists() and not force:
        raise UsageError("output exists", str(path), "pass --force to replace it, or choose another --out")
    if path.exists():
        check_replaceable(path, protect)
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
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError("safetensors header is not valid JSON", str(path), "re-download the weights") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
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

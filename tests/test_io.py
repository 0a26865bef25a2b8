import os

import pytest

from edgeq.errors import EdgeqError, UsageError
from edgeq.io import atomic_dir, atomic_file, check_free_disk, sha256_file, write_json


def _leftovers(d):
    return [p.name for p in d.iterdir() if p.name.startswith(".edgeq-tmp-")]


def test_atomic_file_replaces_and_keeps_mode(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with atomic_file(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert os.stat(target).st_mode & 0o644 == 0o644
    assert _leftovers(tmp_path) == []


def test_atomic_file_failure_keeps_old_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_atomic_dir_refuses_existing_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UsageError, match="output exists"), atomic_dir(out):
        pass


def test_atomic_dir_failure_keeps_previous_output(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        write_json(d / "m.json", {"v": 1})
    with pytest.raises(RuntimeError), atomic_dir(out, force=True) as d:
        write_json(d / "m.json", {"v": 2})
        raise RuntimeError("export gate failed")
    assert (out / "m.json").read_text().count('"v": 1') == 1
    assert _leftovers(tmp_path) == []
    with atomic_dir(out, force=True) as d:
        write_json(d / "m.json", {"v": 3})
    assert '"v": 3' in (out / "m.json").read_text()
    assert _leftovers(tmp_path) == []


def test_sha256_matches_known_digest(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_free_disk_check_refuses_impossible_request(tmp_path):
    check_free_disk(tmp_path / "not" / "yet", 1, "a tiny file")
    with pytest.raises(EdgeqError, match="not enough free disk"):
        check_free_disk(tmp_path, 1 << 60, "an exabyte")

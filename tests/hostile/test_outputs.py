"""Outputs never destroy inputs: one rule (io.claim_output) for every option that writes. A path that is, holds
or lies inside an input is refused with or without --force; an existing path is replaced only with --force, and
only where edgeq marked it as its own."""

import hashlib
import json
from pathlib import Path

import pytest

from edgeq.benchreport import marked, render
from edgeq.errors import UsageError
from edgeq.io import FILE_MARK, claim_output, edgeq_wrote, write_text
from edgeq.probe import tiny_gguf
from edgeq.spec import BENCH_OUTPUTS, EXIT_USAGE
from tests.conftest import run_edgeq


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(r):
    """One error line (progress lines may come before it), no traceback, no internal error."""
    said = [line for line in r.stderr.splitlines() if line.startswith("error")]
    return len(said) == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    return tiny_gguf(tmp_path_factory.mktemp("art") / "tiny.gguf")


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_bench_out_onto_its_own_artifact_is_refused(gguf, force):
    before = _sha(gguf)
    r = run_edgeq("bench", gguf, "--out", gguf, "--reps", 1, *force)
    assert r.returncode == EXIT_USAGE and _one_line(r), r.stderr
    assert "would replace, hold or lie inside an input" in r.stderr
    assert _sha(gguf) == before


def test_bench_out_onto_its_baseline_is_refused(gguf, tmp_path):
    baseline = tmp_path / "base.json"
    baseline.write_text('{"results": {}}')
    r = run_edgeq("bench", gguf, "--baseline", baseline, "--out", baseline, "--force", "--reps", 1)
    assert r.returncode == EXIT_USAGE and "would replace, hold or lie inside an input" in r.stderr
    assert baseline.read_text() == '{"results": {}}'


def test_export_force_onto_its_imatrix_data_is_refused(tiny_model, small_data, tmp_path):
    data = tmp_path / "calib.jsonl"
    data.write_bytes(small_data.read_bytes())
    before = _sha(data)
    r = run_edgeq("export", "--model", tiny_model, "--imatrix-data", data, "--out", data, "--force")
    assert r.returncode == EXIT_USAGE and "would replace, hold or lie inside an input" in r.stderr and _one_line(r)
    assert _sha(data) == before


def test_calibrate_force_onto_its_own_points_file_is_refused(tmp_path):
    points = tmp_path / "points.json"
    points.write_text("[]")
    r = run_edgeq("calibrate", "--points", points, "--out", points, "--force", "--no-onnx")
    assert r.returncode == EXIT_USAGE and "--points and --out name the same file" in r.stderr and _one_line(r)
    assert points.read_text() == "[]"


def test_a_file_edgeq_did_not_write_is_not_replaced_even_with_force(tmp_path):
    mine = tmp_path / "notes.md"
    mine.write_text("my notes")
    with pytest.raises(UsageError, match="output exists"):
        claim_output(mine)
    with pytest.raises(UsageError, match="not written by edgeq"):
        claim_output(mine, force=True)
    assert mine.read_text() == "my notes"


@pytest.mark.parametrize("output", BENCH_OUTPUTS)
def test_every_bench_output_carries_the_mark_and_only_it_is_replaceable(tmp_path, output):
    record = {
        "schema": "edgeq.bench/1",
        "artifact": "/x/a.gguf",
        "backend": "llama.cpp",
        "settings": {"threads": 1, "prompt_tokens": 8, "gen_tokens": 2, "reps": 1},
        "environment": {"artifact_bytes": 1 << 20},
        "results": {
            m: {"mean": 1.0, "sd": 0.0, "min": 1.0, "median": 1.0, "n": 1, "samples": [1.0]}
            for m in ("prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mib", "load_s")
        },
        "checks": [],
    }
    out = tmp_path / f"bench.{output}"
    write_text(out, marked(record, output))
    assert edgeq_wrote(out) and FILE_MARK in out.read_text()
    assert claim_output(out, force=True) == out
    plain = tmp_path / f"plain.{output}"
    write_text(plain, render(record, output))  # what stdout shows: no mark, so not edgeq's file
    assert not edgeq_wrote(plain)
    if output == "json":  # the mark is one more key: the record reads back as before
        assert {k: v for k, v in json.loads(out.read_text()).items() if k != "provenance"} == record
    if output == "csv":  # one more column, on every row
        rows = out.read_text().splitlines()
        assert rows[0].endswith(",provenance") and all(r.endswith(f"{FILE_MARK} " + r.split(" ")[-1]) for r in rows[1:])


def test_a_gguf_edgeq_exported_carries_the_mark(tiny_model, tmp_path):
    out = tmp_path / "m.gguf"
    assert run_edgeq("export", "--model", tiny_model, "--quant", "F32", "--out", out).returncode == 0
    assert edgeq_wrote(out)
    r = run_edgeq("export", "--model", tiny_model, "--quant", "F32", "--out", out, "--force")
    assert r.returncode == 0, r.stderr
    foreign = tmp_path / "other.gguf"
    foreign.write_bytes(tiny_gguf(tmp_path / "t.gguf").read_bytes())  # a GGUF edgeq's exporter did not write
    r = run_edgeq("export", "--model", tiny_model, "--quant", "F32", "--out", foreign, "--force")
    assert r.returncode == EXIT_USAGE and "not written by edgeq" in r.stderr


@pytest.mark.parametrize("case", ["data folder", "non-empty folder", "profile"])
def test_build_refuses_an_out_that_is_not_its_own(tmp_path, small_data, case):
    data = tmp_path / "d" / "train.jsonl"
    data.parent.mkdir()
    data.write_bytes(small_data.read_bytes())
    profile = tmp_path / "p.yaml"
    profile.write_bytes((Path(__file__).parents[2] / "profiles" / "drone.yaml").read_bytes())
    out = {"data folder": data.parent, "non-empty folder": tmp_path / "photos", "profile": profile}[case]
    if case == "non-empty folder":
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"precious")
    before = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    r = run_edgeq("build", "--profile", profile, "--data", data, "--out", out, "--max-steps", 1)
    assert r.returncode == EXIT_USAGE and _one_line(r), r.stderr
    assert sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()) == before


@pytest.mark.parametrize("where", ["base", "data folder"])
def test_finetune_out_in_an_input_is_refused_before_any_checkpoint(tiny_model, small_data, tmp_path, where):
    import shutil

    base = shutil.copytree(tiny_model, tmp_path / "base")
    data = tmp_path / "d" / "train.jsonl"
    data.parent.mkdir()
    data.write_bytes(small_data.read_bytes())
    out = base if where == "base" else data.parent
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = run_edgeq("finetune", "--base", base, "--data", data, "--out", out, "--max-steps", 1, "--seq-len", 64)
    assert r.returncode == EXIT_USAGE and "would replace, hold or lie inside an input" in r.stderr and _one_line(r)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before

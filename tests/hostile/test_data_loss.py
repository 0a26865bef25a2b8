"""edgeq deletes or replaces only what it wrote, and never an input or a folder holding one."""

import shutil

import pytest

from edgeq.errors import UsageError
from edgeq.io import OUTPUT_MARK, atomic_dir, check_replaceable
from edgeq.spec import EXIT_USAGE
from tests.conftest import run_edgeq


def test_a_folder_edgeq_did_not_write_is_never_replaced(tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(UsageError, match="not written by edgeq"), atomic_dir(mine, force=True, protect=[]):
        pass
    assert (mine / "holiday.jpg").read_bytes() == b"precious"
    with atomic_dir(tmp_path / "out", protect=[]) as d:  # what edgeq writes carries the mark...
        (d / "x").write_text("1")
    with atomic_dir(tmp_path / "out", force=True, protect=[]) as d:  # ...so --force may replace it
        (d / "x").write_text("2")
    assert (tmp_path / "out" / "x").read_text() == "2" and (tmp_path / "out" / OUTPUT_MARK).is_file()


@pytest.mark.parametrize("case", ["is", "holds", "inside"])
def test_an_input_is_never_replaced(tmp_path, case):
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"weights")
    target = {"is": model, "holds": tmp_path, "inside": model / "w.safetensors"}[case]
    with pytest.raises(UsageError, match="would replace, hold or lie inside an input"):
        check_replaceable(target, [model])


def test_finetune_keeps_checkpoints_it_did_not_write(tiny_model, small_data, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "notes.txt").write_text("mine")
    args = ["finetune", "--base", tiny_model, "--data", small_data, "--out", out, "--max-steps", 1, "--seq-len", 64]
    r = run_edgeq(*args)
    assert r.returncode == EXIT_USAGE and "checkpoints of an earlier run" in r.stderr and "--force" in r.stderr
    r = run_edgeq(*args, "--force")
    assert r.returncode == EXIT_USAGE and "not written by edgeq" in r.stderr
    assert (out / "checkpoints" / "notes.txt").read_text() == "mine"


def test_finetune_force_restarts_over_its_own_checkpoints(tiny_model, small_data, tmp_path):
    out = tmp_path / "run"
    args = ["finetune", "--base", tiny_model, "--data", small_data, "--out", out, "--max-steps", 1, "--seq-len", 64]
    assert run_edgeq(*args).returncode == 0
    shutil.rmtree(out / "adapter")  # a run killed after its checkpoint
    assert run_edgeq(*args).returncode == EXIT_USAGE
    r = run_edgeq(*args, "--force")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_merge_into_its_own_adapter_folder_is_refused_before_any_work(tiny_model, small_data, tmp_path):
    ft = tmp_path / "ft"
    base = ["--base", tiny_model]
    assert (
        run_edgeq("finetune", *base, "--data", small_data, "--out", ft, "--max-steps", 1, "--seq-len", 64).returncode
        == 0
    )
    before = sorted(p.name for p in ft.rglob("*"))
    r = run_edgeq("merge", *base, "--adapter", ft, "--out", ft, "--force")
    assert r.returncode == EXIT_USAGE and "would replace, hold or lie inside an input" in r.stderr
    assert sorted(p.name for p in ft.rglob("*")) == before


def test_export_over_the_model_weights_is_refused(tiny_model, tmp_path):
    model = shutil.copytree(tiny_model, tmp_path / "model")
    weights = (model / "model.safetensors").read_bytes()
    r = run_edgeq("export", "--model", model, "--quant", "F32", "--out", model / "model.safetensors", "--force")
    assert r.returncode == EXIT_USAGE and "would replace, hold or lie inside an input" in r.stderr
    assert (model / "model.safetensors").read_bytes() == weights

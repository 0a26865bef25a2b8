"""Hostile or broken model directories: refused in one line, exit 2, nothing left at --out."""

import json
import shutil

import pytest

from edgeq.spec import EXIT_USAGE
from tests.conftest import run_edgeq


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    return shutil.copytree(tiny_model, tmp_path / "model")


def _refused(model, tmp_path, needle, *extra):
    out = tmp_path / "out.gguf"
    r = run_edgeq("export", "--model", model, "--quant", "F32", "--out", out, *extra)
    assert r.returncode == EXIT_USAGE, r.stderr
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edgeq-tmp-")]


def test_git_lfs_pointer_instead_of_weights(model_copy, tmp_path):
    (model_copy / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123456\n"
    )
    _refused(model_copy, tmp_path, "a Git LFS pointer, not weights")


def test_truncated_safetensors(model_copy, tmp_path):
    w = model_copy / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    _refused(model_copy, tmp_path, "truncated safetensors")


def test_garbage_safetensors_header(model_copy, tmp_path):
    (model_copy / "model.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    _refused(model_copy, tmp_path, "does not fit the file")


def test_remote_code_is_refused(model_copy, tmp_path):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (model_copy / "config.json").write_text(json.dumps(cfg))
    _refused(model_copy, tmp_path, "needs trust_remote_code")


def test_missing_tokenizer(model_copy, tmp_path):
    (model_copy / "tokenizer.json").unlink()
    _refused(model_copy, tmp_path, "no tokenizer.json")


def _to_pickle(model_copy):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(model_copy / "model.safetensors")), model_copy / "pytorch_model.bin")
    (model_copy / "model.safetensors").unlink()


def test_pickle_only_refused_unless_opted_in(model_copy, tmp_path):
    _to_pickle(model_copy)
    _refused(model_copy, tmp_path, "only pickle weights (pytorch_model.bin)")
    r = run_edgeq("export", "--model", model_copy, "--quant", "F32", "--out", tmp_path / "ok.gguf", "--allow-pickle")
    assert r.returncode == 0, r.stderr[-2000:]


class Evil:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_opted_in_pickle_still_never_runs_code(model_copy, tmp_path):
    import pickle

    import torch

    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Evil(marker)))  # the payload works: unpickling it does create the marker
    assert marker.exists()
    marker.unlink()
    (model_copy / "model.safetensors").unlink()
    torch.save({"w": Evil(marker)}, model_copy / "pytorch_model.bin")
    _refused(model_copy, tmp_path, "refused to unpickle pytorch_model.bin", "--allow-pickle")
    assert not marker.exists()


def test_not_a_model_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    _refused(tmp_path / "empty", tmp_path, "no config.json")


def test_a_link_out_of_the_model_folder_is_refused(model_copy, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("ssh key")
    (model_copy / "chat_template.jinja").unlink(missing_ok=True)
    (model_copy / "chat_template.jinja").symlink_to(secret)
    _refused(model_copy, tmp_path, "chat_template.jinja is a link out of the model folder")


def test_a_link_inside_the_model_folder_is_fine(model_copy, tmp_path):
    (model_copy / "tokenizer.copy.json").symlink_to(model_copy / "tokenizer.json")
    r = run_edgeq("export", "--model", model_copy, "--quant", "F32", "--out", tmp_path / "ok.gguf")
    assert r.returncode == 0, r.stderr[-2000:]

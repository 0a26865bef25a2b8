"""Nothing from outside a model, adapter or ONNX folder gets in: links are checked at any depth, before any
library opens the folder, and a folder's runtime options cannot point ONNX Runtime at files elsewhere."""

import json
import os
import shutil

import pytest

from edgeq.errors import UsageError
from edgeq.io import check_folder
from edgeq.onnxcheck import check_onnx_folder
from edgeq.runtime import ASSETS
from edgeq.spec import EXIT_USAGE, PROBE_ONNX
from tests.conftest import run_edgeq

SECRET = b"the contents of a file outside the model"


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def onnx_folder(tmp_path):
    return shutil.copytree(ASSETS / PROBE_ONNX, tmp_path / "onnx")


def test_a_link_out_in_a_subfolder_is_refused_by_export_and_reaches_no_artifact(tiny_model, tmp_path, secret):
    """transformers reads additional_chat_templates/*.jinja; a link there once carried a file into an artifact."""
    model = shutil.copytree(tiny_model, tmp_path / "model")
    (model / "additional_chat_templates").mkdir()
    (model / "additional_chat_templates" / "tool_use.jinja").symlink_to(secret)
    for fmt, out in (("gguf", tmp_path / "a.gguf"), ("onnx", tmp_path / "onnx-out")):
        r = run_edgeq(
            "export", "--model", model, "--format", fmt, "--quant", "F32" if fmt == "gguf" else "fp32", "--out", out
        )
        assert r.returncode == EXIT_USAGE, r.stderr
        assert "additional_chat_templates/tool_use.jinja is a link out of the model folder" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_check_folder_walks_every_depth(tmp_path, secret, depth):
    root = tmp_path / "m"
    deep = root.joinpath(*[f"d{i}" for i in range(depth)])
    deep.mkdir(parents=True)
    (deep / "ok.txt").write_text("inside")
    assert check_folder(root) == root
    (deep / "leak.txt").symlink_to(secret)
    with pytest.raises(UsageError, match="leak.txt is a link out of the model folder"):
        check_folder(root)


def test_links_inside_the_folder_and_hub_cache_snapshots_are_accepted(tmp_path):
    root = tmp_path / "m"
    (root / "sub").mkdir(parents=True)
    (root / "a.json").write_text("{}")
    (root / "sub" / "b.json").symlink_to(root / "a.json")
    assert check_folder(root) == root
    # the Hugging Face hub cache: snapshots/REV/file → ../../blobs/HASH
    repo = tmp_path / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc123").write_text("{}")
    snap = repo / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    (snap / "config.json").symlink_to(os.path.relpath(repo / "blobs" / "abc123", snap))
    assert check_folder(snap) == snap
    (snap / "x.json").symlink_to(os.path.relpath(repo / "refs", snap))  # inside the repo, not its blobs/
    with pytest.raises(UsageError, match="x.json is a link out"):
        check_folder(snap)


def test_a_dangling_link_and_a_fifo_are_refused(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    (root / "gone").symlink_to(root / "missing")
    with pytest.raises(UsageError, match="gone is a link to nothing readable"):
        check_folder(root)
    (root / "gone").unlink()
    os.mkfifo(root / "pipe")  # a read of it blocks forever
    with pytest.raises(UsageError, match="pipe is not a regular file"):
        check_folder(root)


def test_an_onnx_folder_with_a_nested_link_out_is_refused(onnx_folder, secret):
    (onnx_folder / "extra").mkdir()
    (onnx_folder / "extra" / "chat_template.jinja").symlink_to(secret)
    with pytest.raises(UsageError, match="extra/chat_template.jinja is a link out of the ONNX model folder"):
        check_onnx_folder(onnx_folder)


def _session_options(folder, **options):
    cfg = json.loads((folder / "genai_config.json").read_text())
    cfg["model"]["decoder"]["session_options"].update(options)
    (folder / "genai_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "options",
    [
        {"enable_profiling": "/tmp/edgeq-profile-leak"},  # ONNX Runtime writes a trace under this prefix
        {"ep_context_enable": True, "ep_context_file_path": "/tmp/compiled.onnx"},
        {"config_entries": {"session.optimized_model_filepath": "/tmp/x.onnx"}},
    ],
)
def test_runtime_options_that_write_files_are_refused(onnx_folder, tmp_path, options):
    _session_options(onnx_folder, **options)
    with pytest.raises(UsageError, match="is not an option edgeq lets a model folder set"):
        check_onnx_folder(onnx_folder)
    r = run_edgeq("bench", onnx_folder, "--reps", 1, "--prompt-tokens", 8, "--gen-tokens", 2, cwd=tmp_path)
    assert r.returncode == EXIT_USAGE and "Traceback" not in r.stderr
    assert not any(p.name.startswith("edgeq-profile-leak") for p in tmp_path.parent.iterdir())


@pytest.mark.parametrize(
    "provider, option",
    [("cuda", "trt_engine_cache_path"), ("qnn", "htp_performance_mode"), ("cuda", "backend_path")],
)
def test_provider_options_naming_files_or_unknown_providers_are_refused(onnx_folder, provider, option):
    _session_options(onnx_folder, provider_options=[{provider: {option: "/tmp/x"}}])
    with pytest.raises(UsageError, match="provider_options"):
        check_onnx_folder(onnx_folder)


def test_allowed_runtime_options_pass(onnx_folder):
    _session_options(
        onnx_folder,
        intra_op_num_threads=2,
        log_severity_level=3,
        provider_options=[{"cuda": {"enable_cuda_graph": "0"}}],
    )
    assert check_onnx_folder(onnx_folder) == onnx_folder

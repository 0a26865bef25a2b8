"""Round 3's single defects, one test each: line endings, cache keys, caches cut short, unbounded templates,
field order in protobuf, headers without offsets, manifests without fields, names over 255 bytes, a prompt
longer than the context. Each ends in a right result or one clean line."""

import json
import shutil
import time

import pytest

from edgeq.data import read_jsonl, split_holdout
from edgeq.errors import UsageError
from edgeq.io import check_safetensors
from edgeq.spec import EXIT_USAGE, FINETUNE_MANIFEST
from tests.conftest import run_edgeq


def _one_line(r):
    """One error line (progress lines may come before it), no traceback, no internal error."""
    said = [line for line in r.stderr.splitlines() if line.startswith("error")]
    return len(said) == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr


# --- line endings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"\r\n", b"\r\r\n", b"\n\r\n"])
def test_a_held_out_split_keeps_every_example_whatever_the_line_endings(tmp_path, ending):
    examples = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(30)]
    src = tmp_path / "d.jsonl"
    src.write_bytes(b"".join(json.dumps(e).encode() + ending for e in examples))
    train, test, n_train, n_test = split_holdout(src, tmp_path)
    got = read_jsonl(train) + read_jsonl(test)
    assert (n_train, n_test) == (27, 3) and len(read_jsonl(test)) == 3 and len(read_jsonl(train)) == 27
    assert sorted(m[0]["content"] for m in got) == sorted(e["prompt"] for e in examples)
    assert all(line.strip() for line in test.read_text().splitlines())  # no blank line stands for an example


# --- caches ---------------------------------------------------------------------------------------------------


def test_a_cut_short_probe_cache_is_probed_again(tmp_path, monkeypatch):
    from edgeq import probe

    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path))
    monkeypatch.delenv("EDGEQ_LLAMA_EXTRA_BUFTS", raising=False)
    path = tmp_path / "runtime" / f"llama-{probe.machine_key()}.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"extra_buffer_types": tr')
    monkeypatch.setattr(probe, "probe", lambda on: {"ok": True, "detail": "stub"})
    monkeypatch.setattr(probe, "decide", lambda default, off: probe.LlamaConfig(True, "probed again"))
    assert probe.llama_config() == probe.LlamaConfig(True, "probed again")
    assert json.loads(path.read_text()) == {"extra_buffer_types": True, "reason": "probed again"}


def test_a_cut_short_build_memo_is_dropped(tmp_path):
    from edgeq.build import read_memo

    path = tmp_path / "sha-memo.json"
    path.write_text('{"/a:1:2": "abc", "/b')
    assert read_memo(path) == {}
    path.write_text('{"/a:1:2": 5}')
    assert read_memo(path) == {}
    path.write_text('{"/a:1:2": "abc"}')
    assert read_memo(path) == {"/a:1:2": "abc"}


def test_a_pickle_conversion_is_redone_after_its_chat_template_changed(tiny_model, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from edgeq.basemodel import resolve_model

    monkeypatch.setenv("EDGEQ_CACHE", str(tmp_path / "cache"))
    model = shutil.copytree(tiny_model, tmp_path / "model")
    torch.save(load_file(str(model / "model.safetensors")), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    (model / "chat_template.jinja").write_text("{{ 'first' }}")
    first = resolve_model(model, allow_pickle=True)
    (model / "chat_template.jinja").write_text("{{ 'second' }}")
    second = resolve_model(model, allow_pickle=True)
    assert first != second and (second / "chat_template.jinja").read_text() == "{{ 'second' }}"


def test_a_build_cache_key_covers_files_in_subfolders_of_the_base(tmp_path):
    from edgeq.build import Job, input_hashes

    base = tmp_path / "base"
    (base / "additional_chat_templates").mkdir(parents=True)
    (base / "config.json").write_text("{}")
    (base / "additional_chat_templates" / "t.jinja").write_text("one")
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")

    class Profile:
        def as_dict(self):
            return {}

    job = Job.__new__(Job)
    job.base, job.data, job.test_data, job.calibration, job.profile = base, data, None, data, Profile()
    before = input_hashes(job, {})["base"]
    (base / "additional_chat_templates" / "t.jinja").write_text("two")
    assert input_hashes(job, {})["base"] != before


# --- unbounded templates ------------------------------------------------------------------------------------


class _Tok:
    def __init__(self, template):
        self.chat_template = template

    def apply_chat_template(self, messages, chat_template, tokenize, add_generation_prompt):
        from transformers.utils.chat_template_utils import render_jinja_template

        return render_jinja_template(
            [messages], chat_template=chat_template, add_generation_prompt=add_generation_prompt
        )[0][0]


def test_a_template_that_never_finishes_ends_in_one_error(monkeypatch):
    from edgeq import templates

    monkeypatch.setattr(templates, "RENDER_TIMEOUT_S", 1.0)
    forever = (
        "{% for i in range(99999) %}{% for j in range(99999) %}{% for k in range(99999) %}{% endfor %}"
        "{% endfor %}{% endfor %}"
    )
    t0 = time.monotonic()
    with pytest.raises(UsageError, match="did not finish within 1 s"):
        templates.render(_Tok(forever), [{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 10


def test_a_template_whose_output_explodes_is_refused():
    from edgeq import templates

    with pytest.raises(UsageError, match="the chat template wrote"):
        templates.render(
            _Tok("{% for i in range(3000) %}{{ 'x' * 1000 }}{% endfor %}"), [{"role": "user", "content": "hi"}]
        )


@pytest.mark.parametrize(
    "template, said",
    [
        (None, "the model has no chat template"),
        ("", "the model has no chat template"),
        ({"tool_use": "{{ 1 }}", "rag": "{{ 2 }}"}, "named chat templates (rag, tool_use) and none is 'default'"),
        ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
    ],
)
def test_missing_named_and_failing_templates_are_one_line(template, said):
    from edgeq import templates

    with pytest.raises(UsageError, match=said.replace("(", r"\(").replace(")", r"\)")):
        templates.render(_Tok(template), [{"role": "user", "content": "hi"}])


def test_named_templates_with_a_default_render_it():
    from edgeq import templates

    tok = _Tok({"default": "{{ messages[0]['content'] }}!", "tool_use": "{{ 0 }}"})
    assert templates.render(tok, [{"role": "user", "content": "hi"}]) == "hi!"


def test_eval_task_with_a_never_ending_template_is_one_line(tiny_model, small_data, tmp_path):
    model = shutil.copytree(tiny_model, tmp_path / "model")
    (model / "chat_template.jinja").write_text(
        "{% for i in range(99999) %}{% for j in range(99999) %}{% for k in range(99999) %}{% endfor %}{% endfor %}"
        "{% endfor %}"
    )
    t0 = time.monotonic()
    r = run_edgeq("eval-task", "--model", model, "--data", small_data, "--limit", 1)
    assert r.returncode == EXIT_USAGE and _one_line(r) and "did not finish" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 120


# --- headers, manifests, names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [1]},
        {"dtype": "F32", "shape": [1], "data_offsets": [4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": ["0", 4]},
        "not an entry",
    ],
)
def test_a_safetensors_header_without_valid_offsets_is_refused(tmp_path, entry):
    header = json.dumps({"w": entry}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    with pytest.raises(UsageError, match="has no valid dtype, shape and data_offsets"):
        check_safetensors(path)


def test_an_adapter_manifest_without_inputs_is_refused_in_one_line(tiny_model, small_data, tmp_path):
    ft = tmp_path / "ft"
    args = ["finetune", "--base", tiny_model, "--data", small_data, "--out", ft, "--max-steps", 1, "--seq-len", 64]
    assert run_edgeq(*args).returncode == 0
    manifest = ft / "adapter" / FINETUNE_MANIFEST
    m = json.loads(manifest.read_text())
    del m["inputs"]
    manifest.write_text(json.dumps(m))
    r = run_edgeq("merge", "--base", tiny_model, "--adapter", ft, "--out", tmp_path / "merged")
    assert r.returncode == EXIT_USAGE and _one_line(r) and "inputs.base_sha256 is missing" in r.stderr, r.stderr
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("command", ["export", "bench", "calibrate"])
def test_a_file_name_over_255_bytes_is_one_line(tmp_path, command):
    long = tmp_path / ("x" * 300 + ".out")
    args = {
        "export": ["export", "--quant", "F32", "--out", long],
        "bench": ["bench", long],
        "calibrate": ["calibrate", "--out", long, "--no-onnx"],
    }[command]
    r = run_edgeq(*args)
    assert r.returncode == EXIT_USAGE and _one_line(r), r.stderr


# --- a prompt longer than the context -------------------------------------------------------------------------


@pytest.mark.slow
def test_run_with_a_prompt_longer_than_the_context_is_one_line(tmp_path):
    from edgeq.probe import tiny_gguf

    gguf = tiny_gguf(tmp_path / "t.gguf")
    r = run_edgeq("run", gguf, "word " * 200, "--ctx", 32, "--max-tokens", 4)
    assert r.returncode == EXIT_USAGE and _one_line(r) and "does not fit the context" in r.stderr, r.stderr


# --- the build's lock -----------------------------------------------------------------------------------------


def test_a_build_refused_by_the_lock_writes_nothing(tmp_path, small_data):
    import fcntl

    out = tmp_path / "b"
    split = out / ".edgeq" / "split"
    split.mkdir(parents=True)
    (split / "test.jsonl").write_text("the running build's held-out split\n")
    with open(out / ".edgeq" / "lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a build is running
        r = run_edgeq("build", "--profile", "drone", "--data", small_data, "--out", out, "--max-steps", 1)
    assert r.returncode == EXIT_USAGE and "another edgeq build" in r.stderr and _one_line(r), r.stderr
    assert (split / "test.jsonl").read_text() == "the running build's held-out split\n"
    assert sorted(p.name for p in split.iterdir()) == ["test.jsonl"]

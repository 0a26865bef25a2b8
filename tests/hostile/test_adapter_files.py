"""Hostile and mismatched LoRA adapters: each refused in Python, in one line naming the file, before llama.cpp reads
it (ggufcheck.check_adapter, export/adapter.py)."""

import json

import numpy as np
import pytest

from edgeq.errors import UsageError
from edgeq.export.adapter import export_adapter
from edgeq.export.gguf import GgufExport, write_float_gguf
from edgeq.ggufcheck import check_adapter, check_gguf
from edgeq.spec import ADAPTER_BASE_KEY, EXIT_USAGE
from tests.conftest import make_tiny_model, run_edgeq
from tests.export.test_adapter import random_adapter


def write_adapter(path, tensors: dict, arch="llama", kind="adapter", base_sha=None):
    """A GGUF in llama.cpp's adapter layout with the given tensors (numpy shapes: a (r, in), b (out, r))."""
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_type(kind)
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", 16.0)
    if base_sha:
        w.add_string(ADAPTER_BASE_KEY, base_sha)
    for name, a in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model):
    """The tiny Llama's F32 GGUF and its header (hidden 64: attn_q is [64, 64] in ggml order)."""
    path = tmp_path_factory.mktemp("base") / "base.F32.gguf"
    write_float_gguf(tiny_model, path, "F32")
    return path


def _q(a_in=64, r=4, out=64):
    return {"blk.0.attn_q.weight.lora_a": np.zeros((r, a_in)), "blk.0.attn_q.weight.lora_b": np.zeros((out, r))}


@pytest.mark.parametrize(
    "tensors, kind, arch, expect",
    [
        (_q(), "model", "llama", "general.type"),
        (_q(), "adapter", "qwen2", "architecture 'qwen2'"),
        (_q(a_in=32), "adapter", "llama", "do not fit the base's"),
        (_q(out=48), "adapter", "llama", "do not fit the base's"),
        ({**_q(), "blk.0.attn_q.weight.lora_b": np.zeros((64, 5))}, "adapter", "llama", "do not fit the base's"),
        ({"blk.0.attn_q.weight.lora_a": np.zeros((4, 64))}, "adapter", "llama", "lacks its lora_a or lora_b"),
        ({"blk.9.attn_q.weight.lora_a": np.zeros((4, 64)), "blk.9.attn_q.weight.lora_b": np.zeros((64, 4))},
         "adapter", "llama", "the base has no tensor blk.9.attn_q.weight"),
    ],
    ids=["a-model", "other-arch", "rows-in", "rows-out", "rank", "half", "no-such-weight"],
)  # fmt: skip
def test_an_adapter_that_does_not_fit_its_base_is_refused_before_llama_cpp(base, tmp_path, tensors, kind, arch, expect):
    adapter = write_adapter(tmp_path / "a.gguf", tensors, arch=arch, kind=kind)
    with pytest.raises(UsageError, match="not an adapter for this base") as e:
        check_adapter(check_gguf(base), check_gguf(adapter), str(adapter))
    assert expect in str(e.value) and e.value.where == str(adapter)


def test_an_adapter_for_another_base_is_refused_naming_both(base, tmp_path, tiny_model):
    """Same shapes, other weights: the adapter names its base by content, the base GGUF its source."""
    other = "0" * 64
    adapter = write_adapter(tmp_path / "a.gguf", _q(), base_sha=other)
    with pytest.raises(UsageError, match=f"trained on base {other[:12]}, the base GGUF was written from") as e:
        check_adapter(check_gguf(base), check_gguf(adapter), str(adapter))
    assert check_gguf(base)["metadata"]["edgeq.source.sha256"][:12] in str(e.value)
    for command in (["run", base, "hi"], ["eval", base, "--reference", tiny_model]):  # before any model loads
        r = run_edgeq(*command, "--adapter", adapter)
        assert r.returncode == EXIT_USAGE and "Traceback" not in r.stderr
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error")]
        assert len(errors) == 1 and "trained on base" in errors[0], command


def test_exporting_an_adapter_for_another_base_or_one_llama_cpp_cannot_carry_is_refused(
    tmp_path, tiny_model, default_model
):
    """A manifest naming another base; DoRA; a trained module beside LoRA: one line each, nothing written."""
    run = random_adapter(tiny_model, tmp_path / "run", seed=5)
    (run / "edgeq_finetune.json").write_text(
        json.dumps(
            {
                "inputs": {"base": "/elsewhere", "base_sha256": "f" * 64},
                "quantization": {"quant": "nf4", "double_quant": True},
            }
        )
    )
    with pytest.raises(UsageError, match="trained on base ffffffffffff, --model is"):
        export_adapter(GgufExport(out=str(tmp_path / "a.gguf"), model=str(tiny_model), adapter=str(run)))
    (run / "edgeq_finetune.json").unlink()
    config = json.loads((run / "adapter_config.json").read_text())
    for change, expect in (({"use_dora": True}, "DoRA"), ({"modules_to_save": ["lm_head"]}, "modules or biases")):
        (run / "adapter_config.json").write_text(json.dumps(config | change))
        with pytest.raises(UsageError, match=expect):
            export_adapter(GgufExport(out=str(tmp_path / "a.gguf"), model=str(tiny_model), adapter=str(run)))
    assert not (tmp_path / "a.gguf").exists()
    other = make_tiny_model(tmp_path / "other", default_model, seed=7, hidden_size=32)
    (run / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match="do not fit the base's"):  # checked before peft or llama.cpp loads it
        export_adapter(GgufExport(out=str(tmp_path / "a.gguf"), model=str(other), adapter=str(run)))
    assert not (tmp_path / "a.gguf").exists()

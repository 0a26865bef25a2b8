"""ONNX export through onnxruntime-genai's model builder."""

import pytest

from edgeq.errors import UsageError
from edgeq.export.onnx import OnnxExport, export_onnx
from edgeq.spec import EXIT_USAGE
from tests.conftest import run_edgeq


def test_fp32_export_generates_and_matches_hf(tmp_path, tiny_model):
    r = export_onnx(OnnxExport(model=str(tiny_model), out=str(tmp_path / "onnx"), quant="fp32"))
    assert (tmp_path / "onnx" / "genai_config.json").is_file()
    assert (tmp_path / "onnx" / "chat_template.jinja").is_file()
    assert r.gates["generates"]["generated_tokens"] > 0
    assert r.gates["fidelity"]["top1"] >= 0.99


def test_fp16_needs_a_gpu_target(tmp_path):
    with pytest.raises(UsageError, match="fp16 ONNX targets GPUs"):
        export_onnx(OnnxExport(model=None, out=str(tmp_path / "o"), quant="fp16"))


def test_unknown_precision_lists_valid_ones(tmp_path):
    r = run_edgeq("export", "--format", "onnx", "--quant", "int3", "--out", tmp_path / "o")
    assert r.returncode == EXIT_USAGE and "int4-block32" in r.stderr and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_default_int4_is_no_larger_than_1_1x_q4_k_m(tmp_path, default_model):
    assert run_edgeq("export", "--quant", "Q4_K_M", "--out", tmp_path / "m.gguf").returncode == 0
    r = run_edgeq("export", "--format", "onnx", "--quant", "int4-block32", "--out", tmp_path / "onnx")
    assert r.returncode == 0, r.stderr[-2000:]
    onnx_bytes = sum(f.stat().st_size for f in (tmp_path / "onnx").rglob("*") if f.is_file())
    assert onnx_bytes <= 1.1 * (tmp_path / "m.gguf").stat().st_size


def test_int4_export_stays_close_to_the_float_model(tmp_path, default_model):
    from transformers import AutoTokenizer

    from edgeq.evaluate import GATE_TOKENS, compare_logits, fidelity_ids
    from tests.conftest import make_tiny_model

    sharp = make_tiny_model(tmp_path / "sharp", default_model, initializer_range=0.1)  # see test_gguf's Q/K test
    other = make_tiny_model(tmp_path / "other", default_model, seed=1, initializer_range=0.1)
    export_onnx(OnnxExport(model=str(sharp), out=str(tmp_path / "onnx"), quant="int4-block32"))
    ids = fidelity_ids(AutoTokenizer.from_pretrained(sharp), GATE_TOKENS)
    own, wrong = compare_logits(tmp_path / "onnx", sharp, ids), compare_logits(tmp_path / "onnx", other, ids)
    # measured: against its own float model KLD 0.031, top-1 0.47 (random weights: small top-1
    # margins); against another model of the same shape KLD 0.64, top-1 0.0
    assert own.mean_kld < 0.1 and own.top1_agreement >= 0.3, own
    assert wrong.mean_kld > 5 * own.mean_kld, wrong


def test_the_onnx_served_prompt_is_the_folders_template_with_the_trained_system_prompt(tmp_path, tiny_model):
    """ONNX Runtime GenAI's chat completion renders the folder's own template, which carries the system prompt a
    merge embedded: a user-only request reaches the model as transformers renders it, token for token."""
    import shutil

    from transformers import AutoTokenizer

    from edgeq.merge import write_template
    from edgeq.runtime import chat
    from edgeq.serving import embed

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    tok = AutoTokenizer.from_pretrained(model)
    write_template(model, embed(tok.chat_template, "Fly safe. Reply with one JSON action.", tok))
    export_onnx(OnnxExport(model=str(model), out=str(tmp_path / "onnx"), quant="fp32"))
    convo = [{"role": "user", "content": "take off to 12 m"}]
    (served,) = chat(tmp_path / "onnx", [convo], 4)
    tok = AutoTokenizer.from_pretrained(model)
    text = tok.apply_chat_template(convo, add_generation_prompt=True, tokenize=False)
    assert "Fly safe. Reply with one JSON action." in text
    assert served["prompt_ids"] == tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("arch", ["phi3", "gemma3_text", "smollm3"])
def test_a_model_the_builder_does_not_take_is_refused_with_the_way_out(arch, tmp_path, default_model):
    """Phi-4-mini's shape (Phi-3, ¾ of each head rotated), Gemma 3 and SmolLM3 as transformers 5 configures them
    fail inside the GenAI builder: one line that names the model type and points at GGUF, and no folder left."""
    from edgeq.errors import EdgeqError
    from tests.conftest import tiny_arch_model

    model = tiny_arch_model(arch, tmp_path / "p" / "model", default_model)
    with pytest.raises(EdgeqError, match="model builder failed") as e:
        export_onnx(OnnxExport(model=str(model), out=str(tmp_path / "onnx"), quant="fp32"))
    assert f"does not take this {arch} model" in e.value.fix and "--format gguf" in e.value.fix
    assert not (tmp_path / "onnx").exists()


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "qwen3"])
def test_other_architectures_export_to_onnx_with_every_gate_green(arch, tmp_path, default_model):
    from tests.conftest import tiny_arch_model

    model = tiny_arch_model(arch, tmp_path / "m" / "model", default_model)
    r = export_onnx(OnnxExport(model=str(model), out=str(tmp_path / "onnx"), quant="fp32"))
    assert r.gates["generates"]["generated_tokens"] > 0
    assert r.gates["fidelity"]["top1"] >= 0.99 and r.gates["fidelity"]["max_abs_logit"] < 1e-3

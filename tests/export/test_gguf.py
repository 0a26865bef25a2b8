"""GGUF export on tiny random-weight models of each supported architecture, and on the default model."""

import math
import shutil

import numpy as np
import pytest

from edgeq.errors import EdgeqError, UsageError
from edgeq.evaluate import GATE_TOKENS, compare_logits, fidelity_ids
from edgeq.export import gguf as export_mod
from edgeq.export.gguf import GgufExport, export_gguf, quantize_gguf, write_float_gguf
from edgeq.export.imatrix import compute_imatrix, load_imatrix, save_imatrix
from edgeq.ggufcheck import check_gguf
from edgeq.io import FILE_MARK
from edgeq.spec import EXIT_USAGE, FORMAT_GGUF, GGUF_FLOAT_TYPES, QUANT_TYPES, quant_names
from tests.conftest import make_tiny_model, run_edgeq, tiny_arch_model


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text", "smollm3"])
def test_tiny_architectures_pass_every_gate(arch, tmp_path, default_model):
    model = tiny_arch_model(arch, tmp_path / arch / "model", default_model)
    r = export_gguf(GgufExport(model=str(model), out=str(tmp_path / "m.gguf"), quant="F32"))
    g = r.gates
    assert g["tokenizer"]["mismatches"] == 0 and g["tokenizer"]["strings"] >= 500
    # Qwen2's tokenizer normalizes to NFC and llama.cpp does not: the decomposed strings are counted, not hidden
    assert ("unnormalized" in g["tokenizer"]) == (arch == "qwen2"), g["tokenizer"]
    assert (
        g["special_tokens"]["eos"] == 2 and g["special_tokens"]["eos_is_eog"] and g["special_tokens"]["chat_template"]
    )
    assert g["fidelity"]["top1"] >= 0.99 and g["fidelity"]["max_abs_logit"] <= 0.02
    header = check_gguf(tmp_path / "m.gguf")
    assert header["metadata"]["general.architecture"] == {"mistral": "llama", "gemma3_text": "gemma3"}.get(arch, arch)


def test_a_gemma3_written_without_its_conventions_fails_the_fidelity_gate(tmp_path, default_model, monkeypatch):
    """The gate that passes Gemma 3 is one that can fail on it: llama.cpp's norms scale by w where HF's scale
    by 1 + w, and a writer that forgets it gets top-1 ≈ 0."""
    import dataclasses

    model = tiny_arch_model("gemma3_text", tmp_path / "model", default_model)
    plain = dataclasses.replace(export_mod.GGUF_ARCHS["gemma3_text"], norm_offset=0.0)
    monkeypatch.setitem(export_mod.GGUF_ARCHS, "gemma3_text", plain)
    with pytest.raises(EdgeqError, match="F32 GGUF disagrees with the HF model"):
        export_gguf(GgufExport(model=str(model), out=str(tmp_path / "m.gguf"), quant="F32"))
    assert not (tmp_path / "m.gguf").exists()


# Settings llama.cpp fixes for itself (Gemma 3, SmolLM3): a config that states another is refused, naming the key
LLAMA_CPP_FIXES = {
    "layer_types": ("gemma3_text", {"layer_types": ["sliding_attention"] * 3 + ["full_attention"] * 3}),
    "the sliding layers' rope": (
        "gemma3_text",
        {
            "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 50000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            }
        },
    ),
    "query_pre_attn_scalar": ("gemma3_text", {"query_pre_attn_scalar": 64}),
    "final_logit_softcapping": ("gemma3_text", {"final_logit_softcapping": 30.0}),
    "no_rope_layers": ("smollm3", {"no_rope_layers": [1, 1, 1, 1]}),
}


@pytest.mark.parametrize("key", LLAMA_CPP_FIXES)
def test_a_model_that_llama_cpp_would_run_differently_is_refused(key, tmp_path, default_model):
    arch, overrides = LLAMA_CPP_FIXES[key]
    model = tiny_arch_model(arch, tmp_path / "model", default_model, **overrides)
    with pytest.raises(UsageError, match="would run it differently") as e:
        export_gguf(GgufExport(model=str(model), out=str(tmp_path / "m.gguf"), quant="F32"))
    assert str(e.value).startswith(key) and not (tmp_path / "m.gguf").exists()


def test_gemma3_with_linear_rope_scaling_on_its_global_layers_passes_the_gates(tmp_path, default_model):
    """Gemma 3 4B and up scale the global layers' positions by 8 (linear); the sliding ones stay unscaled."""
    rope = {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
    }
    model = tiny_arch_model("gemma3_text", tmp_path / "model", default_model, rope_parameters=rope)
    r = export_gguf(GgufExport(model=str(model), out=str(tmp_path / "m.gguf"), quant="F32"))
    assert r.gates["fidelity"]["top1"] >= 0.99 and r.gates["fidelity"]["max_abs_logit"] <= 0.02
    meta = check_gguf(tmp_path / "m.gguf")["metadata"]
    assert meta["gemma3.rope.scaling.type"] == "linear" and meta["gemma3.rope.scaling.factor"] == 8.0


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,  # small, so that the scaling shows within the gate's 256 tokens
}


def _llama3_factors(head_dim: int) -> list[float]:
    """Meta's rule, from its definition: wavelengths shorter than original / high_freq_factor keep their
    frequency, longer than original / low_freq_factor are slowed by `factor`, and those between blend."""
    r = LLAMA3_ROPE
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * r["rope_theta"] ** (i / head_dim)
        if wavelen < r["original_max_position_embeddings"] / r["high_freq_factor"]:
            out.append(1.0)
        elif wavelen > r["original_max_position_embeddings"] / r["low_freq_factor"]:
            out.append(r["factor"])
        else:
            smooth = (r["original_max_position_embeddings"] / wavelen - r["low_freq_factor"]) / (
                r["high_freq_factor"] - r["low_freq_factor"]
            )
            out.append(1 / ((1 - smooth) / r["factor"] + smooth))
    return out


def test_llama3_rope_scaling_is_written_as_llamas_frequency_factors(tmp_path, default_model, monkeypatch):
    """Llama-3.2-1B's rope: llama.cpp divides each frequency by a factor the GGUF carries (`rope_freqs`).
    Without it the same export gives top-1 0.42, max |Δlogit| 3.45 (measured); the gate refuses that."""
    from gguf import GGUFReader

    model = tiny_arch_model(
        "llama", tmp_path / "model", default_model, rope_parameters=LLAMA3_ROPE, initializer_range=0.1
    )
    r = export_gguf(GgufExport(model=str(model), out=str(tmp_path / "m.gguf"), quant="F32"))
    assert r.gates["fidelity"]["top1"] >= 0.99 and r.gates["fidelity"]["max_abs_logit"] <= 0.02
    tensor = next(t for t in GGUFReader(tmp_path / "m.gguf").tensors if t.name == "rope_freqs.weight")
    expected = _llama3_factors(16)
    assert [round(float(x), 4) for x in tensor.data] == [round(x, 4) for x in expected]
    assert expected[0] == 1.0 and expected[-1] == 32.0 and 1.0 < expected[1] < 32.0  # all three regimes

    monkeypatch.setattr(export_mod, "llama3_rope_factors", lambda cfg: np.ones(8, dtype=np.float32))
    with pytest.raises(EdgeqError, match="F32 GGUF disagrees with the HF model"):
        export_gguf(GgufExport(model=str(model), out=str(tmp_path / "plain.gguf"), quant="F32"))


def test_a_rope_scaling_edgeq_does_not_write_is_refused(tmp_path, default_model):
    yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 128}
    model = tiny_arch_model("llama", tmp_path / "model", default_model, rope_parameters=yarn)
    with pytest.raises(UsageError, match="rope scaling 'yarn' is not one edgeq writes") as e:
        export_gguf(GgufExport(model=str(model), out=str(tmp_path / "m.gguf"), quant="F32"))
    assert "default, linear, llama3" in e.value.fix


def test_tiny_quantized_export_is_close_to_the_float_model(tmp_path, default_model):
    from transformers import AutoTokenizer

    sharp = make_tiny_model(tmp_path / "sharp", default_model, initializer_range=0.1)  # see the Q/K test below
    r = export_gguf(GgufExport(model=str(sharp), out=str(tmp_path / "q.gguf"), quant="Q8_0"))
    assert r.gates["tokenizer_quantized"]["mismatches"] == 0
    assert check_gguf(tmp_path / "q.gguf")["metadata"]["general.file_type"] == QUANT_TYPES["Q8_0"].ftype
    ids = fidelity_ids(AutoTokenizer.from_pretrained(sharp), GATE_TOKENS)
    fidelity = compare_logits(tmp_path / "q.gguf", sharp, ids)
    # measured: top-1 0.906, max |Δlogit| 0.20 (random weights leave small top-1 margins); a wrong
    # rotary layout gives top-1 0.14 and 4.4 on the same model
    assert fidelity.top1_agreement >= 0.8 and fidelity.max_abs_logit < 1.0, fidelity


def test_unsupported_architecture_is_named(tmp_path, default_model):
    model = tiny_arch_model("gpt2", tmp_path / "gpt2", default_model)
    with pytest.raises(UsageError) as e:
        export_gguf(GgufExport(model=str(model), out=str(tmp_path / "m.gguf"), quant="F16"))
    assert "'gpt2' is not supported" in e.value.line() and "llama, mistral, qwen2, qwen3" in e.value.line()
    assert not (tmp_path / "m.gguf").exists()


def test_unknown_quant_lists_valid_types(tmp_path):
    r = run_edgeq("export", "--quant", "Q9_X", "--out", tmp_path / "m.gguf")
    assert r.returncode == EXIT_USAGE
    assert "unknown GGUF quant type 'Q9_X'" in r.stderr and "Q4_K_M" in r.stderr and "Traceback" not in r.stderr


def test_failed_gate_keeps_previous_artifact_and_leaves_no_temp(tmp_path, tiny_model, monkeypatch):
    out = tmp_path / "m.gguf"
    previous = b"previous artifact " + FILE_MARK.encode()  # what edgeq wrote: --force may replace it
    out.write_bytes(previous)
    with pytest.raises(UsageError, match="output exists"):
        export_gguf(GgufExport(model=str(tiny_model), out=str(out), quant="F32"))

    def broken(*a, **k):
        raise EdgeqError("tokenizer parity failed on 3 of 328 strings")

    monkeypatch.setattr(export_mod, "gate_tokenizer", broken)
    with pytest.raises(EdgeqError, match="parity"):
        export_gguf(GgufExport(model=str(tiny_model), out=str(out), quant="F32", force=True))
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["F16", "Q4_K_M"])
def test_default_model_exports_through_the_cli(quant, tmp_path, default_model):
    r = run_edgeq("export", "--quant", quant, "--out", tmp_path / "m.gguf")
    assert r.returncode == 0, r.stderr[-2000:]
    assert check_gguf(tmp_path / "m.gguf")["metadata"]["general.file_type"] == QUANT_TYPES[quant].ftype


@pytest.mark.slow
def test_default_model_generation_stops_at_eos(tmp_path, default_model):
    from edgeq.runtime import chat

    assert run_edgeq("export", "--quant", "Q8_0", "--out", tmp_path / "m.gguf").returncode == 0
    (out,) = chat(tmp_path / "m.gguf", [[{"role": "user", "content": "Say hello."}]], max_tokens=200)
    assert out["finish_reason"] == "stop" and out["completion_tokens"] < 200


def test_imatrix_changes_the_quantization_and_is_recorded(tmp_path, tiny_model, small_data):
    plain = export_gguf(GgufExport(model=str(tiny_model), out=str(tmp_path / "p.gguf"), quant="Q4_K_S"))
    imx = export_gguf(
        GgufExport(model=str(tiny_model), out=str(tmp_path / "i.gguf"), quant="Q4_K_S", imatrix_data=str(small_data))
    )
    assert "imatrix" not in plain.gates
    # every decoder linear of the 2-layer model, and the tied head (mixed.py weighs token_embd's error by it)
    assert imx.gates["imatrix"]["tensors"] == 2 * 7 + 1
    assert imx.gates["imatrix"]["tokens"] > 1000
    assert (tmp_path / "p.gguf").read_bytes() != (tmp_path / "i.gguf").read_bytes()


def test_the_types_said_to_weigh_by_an_importance_matrix_are_those_llama_cpp_rounds_differently_with_one(
    tmp_path, default_model, small_data
):
    """spec's uses_imatrix column against llama.cpp itself: a build computes the matrix only for these types. Rows
    of 256 weights: narrower ones make llama.cpp fall back from the K-types (Q6_K to Q8_0)."""
    model = make_tiny_model(tmp_path / "hf", default_model, hidden_size=256, intermediate_size=512, head_dim=64)
    flt = tmp_path / "m.F16.gguf"
    write_float_gguf(model, flt, "F16")
    matrix, _ = compute_imatrix(model, small_data)
    differs = {}
    for q in quant_names(FORMAT_GGUF, calibrated_only=True):
        if q in GGUF_FLOAT_TYPES:
            continue
        quantize_gguf(flt, tmp_path / "plain.gguf", q)
        quantize_gguf(flt, tmp_path / "weighed.gguf", q, matrix)
        differs[q] = (tmp_path / "plain.gguf").read_bytes() != (tmp_path / "weighed.gguf").read_bytes()
    assert differs == {q: QUANT_TYPES[q].uses_imatrix for q in differs}
    assert differs["Q4_K_M"] and not differs["Q8_0"]


def test_a_saved_imatrix_quantizes_exactly_as_the_computed_one(tmp_path, tiny_model, small_data):
    matrix, summary = compute_imatrix(tiny_model, small_data)
    save_imatrix(matrix, summary, tmp_path / "imatrix.safetensors")
    loaded, info = load_imatrix(tmp_path / "imatrix.safetensors")
    assert loaded.keys() == matrix.keys() and all((loaded[k] == matrix[k]).all() for k in matrix)
    assert info["tensors"] == "15" and len(info["sha256"]) == 64
    computed = tmp_path / "c.gguf"
    export_gguf(GgufExport(model=str(tiny_model), out=str(computed), quant="Q4_K_S", imatrix_data=str(small_data)))
    r = export_gguf(
        GgufExport(model=str(tiny_model), out=str(tmp_path / "s.gguf"), quant="Q4_K_S", imatrix=info["file"])
    )
    assert r.gates["imatrix"]["sha256"] == info["sha256"]
    assert (tmp_path / "s.gguf").read_bytes() == computed.read_bytes()


# Each gate broken on purpose: the export must refuse, name the gate, and leave no artifact.


def _export_refused(tiny_model, tmp_path, match, quant="F32"):
    with pytest.raises(EdgeqError, match=match):
        export_gguf(GgufExport(model=str(tiny_model), out=str(tmp_path / "m.gguf"), quant=quant))
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("damage", ["merges", "pre-tokenizer"])
def test_a_damaged_tokenizer_fails_the_parity_gate(damage, tmp_path, tiny_model, monkeypatch):
    real = export_mod.tokenizer_metadata

    def damaged(tok, vocab_size):
        meta = real(tok, vocab_size)
        if damage == "merges":
            meta["merges"] = meta["merges"][200:]  # the highest-priority merges lost
        else:
            meta["pre"] = "gpt-2"  # llama.cpp's GPT-2 split: no individual digits, unlike SmolLM's
        return meta

    monkeypatch.setattr(export_mod, "tokenizer_metadata", damaged)
    _export_refused(tiny_model, tmp_path, "tokenizer parity failed")


def test_an_unpermuted_q_k_fails_the_fidelity_gate(tmp_path, default_model, monkeypatch):
    # Weights of std 0.1, not 0.02: at 0.02 attention is near uniform and the logits so small that even
    # a wrong rotary layout stays under the gate's 0.02 (measured 0.012; right layout 0.0003). At 0.1 the
    # right layout gives 0.002 and the wrong one 4.4 with top-1 0.14.
    sharp = make_tiny_model(tmp_path / "sharp", default_model, initializer_range=0.1)
    export_gguf(GgufExport(model=str(sharp), out=str(tmp_path / "ok.gguf"), quant="F32"))
    monkeypatch.setattr(export_mod, "permute_qk", lambda w, n_head: w)  # HF's rotate-half layout left as it is
    _export_refused(sharp, tmp_path, "F32 GGUF disagrees with the HF model")


def test_a_wrong_eos_id_in_the_file_fails_the_special_token_gate(tmp_path, tiny_model, monkeypatch):
    from gguf import GGUFWriter

    real = GGUFWriter.add_eos_token_id
    monkeypatch.setattr(GGUFWriter, "add_eos_token_id", lambda self, i: real(self, 0))  # <|endoftext|>, not <|im_end|>
    _export_refused(tiny_model, tmp_path, "GGUF lost eos")


def test_eos_check_tells_an_end_token_from_an_ordinary_one(tmp_path, tiny_model):
    from edgeq.runtime import gguf_is_eog

    export_gguf(GgufExport(model=str(tiny_model), out=str(tmp_path / "m.gguf"), quant="F32"))
    # <|im_end|> ends generation; an ordinary token does not: generation would run on
    assert gguf_is_eog(tmp_path / "m.gguf", [2, 100]) == [True, False]


def test_a_folder_named_phi3_is_refused_before_llama_cpp_keys_its_token_rules_on_it(tmp_path, tiny_model):
    """llama.cpp gives any GGUF whose general.name says phi-3 Phi-3's token rules (and fails to load a vocabulary
    without </s>): the export names the folder, so it refuses that name with the fix."""
    shutil.copytree(tiny_model, tmp_path / "Phi-3-drone")
    with pytest.raises(UsageError, match="Phi-3 token rules") as e:
        export_gguf(GgufExport(model=str(tmp_path / "Phi-3-drone"), out=str(tmp_path / "m.gguf"), quant="F32"))
    assert "rename the model folder" in e.value.fix and not (tmp_path / "m.gguf").exists()

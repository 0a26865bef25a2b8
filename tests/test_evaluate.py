"""`edgeq eval`: fidelity numbers of an artifact against its float reference."""

import json
from pathlib import Path

import numpy as np
import pytest

from edgeq.errors import UsageError
from edgeq.evaluate import compare
from edgeq.export.gguf import GgufExport, export_gguf
from edgeq.runtime import artifact_format
from edgeq.spec import EXIT_USAGE
from tests.conftest import run_edgeq


def test_compare_on_known_logits():
    ref = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]))
    same = compare(ref, ref.copy(), [0, 1, 2])
    assert same.mean_kld == pytest.approx(0, abs=1e-12) and same.top1_agreement == 1.0
    assert same.ppl_reference == pytest.approx(np.exp(-(np.log(0.2) + np.log(0.1)) / 2))
    flipped = compare(ref, ref[:, ::-1].copy(), [0, 1, 2])
    assert flipped.mean_kld > 0.1 and flipped.top1_agreement < 1.0


def test_kld_is_the_references_distribution_against_the_artifacts_by_hand():
    """KL(P_ref ‖ Q_artifact) = Σ p (log p − log q), averaged over positions; the other direction differs here."""
    import math

    p_rows, q_rows = [[0.9, 0.05, 0.05], [0.5, 0.25, 0.25]], [[0.45, 0.45, 0.1], [0.2, 0.5, 0.3]]
    pairs = [list(zip(pr, qr, strict=True)) for pr, qr in zip(p_rows, q_rows, strict=True)]
    by_hand = sum(sum(p * math.log(p / q) for p, q in row) for row in pairs) / 2
    reverse = sum(sum(q * math.log(q / p) for p, q in row) for row in pairs) / 2
    assert abs(by_hand - reverse) > 0.01  # an argument swap would show
    ref, art = np.log(np.array(p_rows)) + 3.0, np.log(np.array(q_rows)) - 1.0  # logits: any shift per row
    f = compare(ref, art, [0, 1])
    assert f.mean_kld == pytest.approx(by_hand, rel=1e-9)
    assert f.top1_agreement == 0.5  # position 0: 0 and 0 (the tie goes to the first); position 1: 0 and 1
    assert f.max_abs_logit == pytest.approx(np.abs(ref - art).max())
    assert f.ppl_reference == pytest.approx(1 / 0.05) and f.ppl_artifact == pytest.approx(1 / 0.45)  # next: token 1


def test_artifact_format_errors(tmp_path):
    with pytest.raises(UsageError, match="artifact not found"):
        artifact_format(tmp_path / "nope.gguf")
    (tmp_path / "onnx").mkdir()
    with pytest.raises(UsageError, match="no genai_config.json"):
        artifact_format(tmp_path / "onnx")
    (tmp_path / "model.bin").write_bytes(b"\0")
    with pytest.raises(UsageError, match="unknown artifact format"):
        artifact_format(tmp_path / "model.bin")


def test_f32_gguf_of_tiny_model_is_faithful(tmp_path, tiny_model, small_data):
    export_gguf(GgufExport(model=str(tiny_model), out=str(tmp_path / "m.gguf"), quant="F32"))
    r = run_edgeq("eval", tmp_path / "m.gguf", "--reference", tiny_model, "--data", small_data, "--limit", 3, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["text"]["mean_kld"] < 1e-4 and res["text"]["top1_agreement"] >= 0.99
    assert res["task_text"]["positions"] > 100 and res["task"]["n"] == 3


def test_eval_of_lying_gguf_is_one_line(tmp_path, tiny_model):
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + (99).to_bytes(4, "little") + b"\0" * 32)
    r = run_edgeq("eval", tmp_path / "m.gguf", "--reference", tiny_model)
    assert r.returncode == EXIT_USAGE and "unsupported version 99" in r.stderr and "Traceback" not in r.stderr


def test_served_mode_scores_the_artifact_through_its_own_template(tmp_path, tiny_model, small_data):
    export_gguf(GgufExport(model=str(tiny_model), out=str(tmp_path / "m.gguf"), quant="F32"))
    args = ("eval", tmp_path / "m.gguf", "--reference", tiny_model, "--data", small_data, "--limit", 2)
    r = run_edgeq(*args, "--served", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)
    assert res["task_served"]["n"] == res["task"]["n"] == 2
    r = run_edgeq("eval", tmp_path / "m.gguf", "--reference", tiny_model, "--served")
    assert r.returncode == EXIT_USAGE and "--served scores the task: it needs --data" in r.stderr


def test_served_answers_are_reused_exactly_where_the_prompt_tokens_match(tmp_path, two_models, small_data):
    from transformers import AutoTokenizer

    from edgeq.evaluate import rendered
    from edgeq.runtime import task_answers
    from edgeq.serving import user_only
    from edgeq.task import load_task
    from edgeq.templates import turn_ends

    gguf, model = tmp_path / "m.gguf", two_models[0]  # weights of std 0.1: answers differ from prompt to prompt
    export_gguf(GgufExport(model=str(model), out=str(gguf), quant="F32"))
    task, tok = load_task(small_data, 3), AutoTokenizer.from_pretrained(model)
    prompts, refs = rendered(tok, task)
    alone = task_answers(gguf, prompts, refs, [], 12, turn_ends(tok))
    assert alone["reused"] == 0 and alone["served"] == [] and len({tuple(a) for a in alone["answers"]}) == 3
    # the training data's system turn sent along: the served render is the evaluation's, so one decode answers both
    whole = task_answers(gguf, prompts, refs, task.prompts, 12, turn_ends(tok))
    assert whole["reused"] == 3 and whole["answers"] == alone["answers"]
    assert [c["prompt_ids"] for c in whole["served"]] == prompts
    assert [c["text"] for c in whole["served"]] == [tok.decode(a) for a in alone["answers"]]
    # only the user's turn: the tiny model's template adds the base's own system prompt, not the data's
    users = task_answers(gguf, prompts, refs, [user_only(p) for p in task.prompts], 12, turn_ends(tok))
    assert users["reused"] == 0 and users["answers"] == alone["answers"]
    assert [c["prompt_ids"] for c in users["served"]] != prompts
    # the batch's make-up changes the order of float sums, nothing else
    assert users["nll_sum"] == pytest.approx(alone["nll_sum"], rel=1e-6) == whole["nll_sum"]
    assert alone["tokens"] == sum(map(len, refs)) > 0


def test_batched_answer_nll_equals_one_sequence_at_a_time(tiny_model, small_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeq.evaluate import answer_positions, hf_answer_nll, reference_logits
    from edgeq.runtime import answer_nll_of
    from edgeq.task import load_task

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    seqs, starts = answer_positions(AutoTokenizer.from_pretrained(tiny_model), load_task(small_data, 12))
    assert len({len(s) for s in seqs}) > 1  # padding is exercised
    one = answer_nll_of(lambda ids: reference_logits(model, ids), seqs, starts)
    batched = hf_answer_nll(model, seqs, starts, batch_size=5)
    assert batched["tokens"] == one["tokens"] > 0
    assert batched["nll_sum"] == pytest.approx(one["nll_sum"], rel=1e-6)
    for (nll, n), seq, start in zip(batched["each"], seqs, starts, strict=True):  # each in the order given
        alone = answer_nll_of(lambda ids: reference_logits(model, ids), [seq], [start])
        assert n == alone["tokens"] and nll == pytest.approx(alone["nll_sum"], rel=1e-6)


def test_batched_generation_keeps_the_prompts_order(two_models, small_data):
    from edgeq.task import generate_hf, load_task

    model = two_models[0]  # weights of std 0.1: its answers differ from prompt to prompt
    prompts = load_task(small_data, 6).prompts
    prompts = [prompts[0] + [{"role": "user", "content": "and again, slower " * k}] for k in (3, 0, 5, 1, 4, 2)]
    one_by_one = [generate_hf(model, [p], 8)[0] for p in prompts]
    assert len(set(one_by_one)) > 3
    assert generate_hf(model, prompts, 8, batch_size=4) == one_by_one


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, default_model):
    """Two random models of one shape and tokenizer, weights of std 0.1: at the usual 0.02 the residual
    stream is nearly the input embedding and any two tied-embedding models agree on top-1 (measured 99.7 %)."""
    from tests.conftest import make_tiny_model

    root = tmp_path_factory.mktemp("two")
    return [make_tiny_model(root / f"m{seed}", default_model, seed=seed, initializer_range=0.1) for seed in (0, 1)]


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_eval_tells_another_models_artifact_from_the_reference(fmt, tmp_path, two_models, small_data):
    reference, other = two_models
    if fmt == "gguf":
        artifact = tmp_path / "other.gguf"
        export_gguf(GgufExport(model=str(other), out=str(artifact), quant="F32"))
    else:
        from edgeq.export.onnx import OnnxExport, export_onnx

        artifact = tmp_path / "onnx"
        export_onnx(OnnxExport(model=str(other), out=str(artifact), quant="fp32"))
    from edgeq.evaluate import evaluate

    task = {"data": small_data, "limit": 1} if fmt == "gguf" else {}  # task text once: it is the same code
    faithful, wrong = evaluate(artifact, other, **task), evaluate(artifact, reference, **task)
    assert faithful.text.mean_kld < 1e-3 and faithful.text.top1_agreement >= 0.99
    for part in ("text", "task_text") if task else ("text",):
        assert getattr(wrong, part).mean_kld > 100 * max(getattr(faithful, part).mean_kld, 1e-5), part
        assert getattr(wrong, part).top1_agreement < 0.5, part


def test_the_served_score_is_the_ggufs_own_template_decoded_greedily_by_llama_cpp(tmp_path, two_models, small_data):
    """An independent serving path: the template read from the GGUF's metadata, rendered here with Jinja over the
    user's turns, tokenized and decoded greedily token by token in llama.cpp until it says end-of-generation, then
    scored with sacrebleu. The served score is that score; the evaluation render (the data's system turn, the HF
    template) gives other answers on this model, so serving through the wrong template would show."""
    import gguf
    import jinja2.sandbox
    import llama_cpp
    from sacrebleu.metrics import CHRF

    from edgeq.basemodel import load_tokenizer
    from edgeq.evaluate import answer_budget
    from edgeq.task import load_task

    model, path = two_models[0], tmp_path / "m.gguf"  # weights of std 0.1: answers follow the prompt
    export_gguf(GgufExport(model=str(model), out=str(path), quant="F32"))
    r = run_edgeq(
        "eval", path, "--reference", model, "--data", small_data, "--limit", 3, "--metric", "chrf", "--served", "--json"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout)

    task = load_task(small_data, 3, "chrf")
    budget = answer_budget(load_tokenizer(model), task)
    meta = gguf.GGUFReader(path).fields
    template, tokens = meta["tokenizer.chat_template"].contents(), meta["tokenizer.ggml.tokens"].contents()
    specials = {k: tokens[meta[f"tokenizer.ggml.{k}_id"].contents()] for k in ("bos_token", "eos_token")}
    render = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)
    llm = llama_cpp.Llama(str(path), n_ctx=2048, logits_all=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    answers = []
    for prompt in task.prompts:
        users = [m for m in prompt if m["role"] == "user"]
        text = render.render(messages=users, add_generation_prompt=True, **specials)
        llm.reset()
        llm.eval(llm.tokenize(text.encode(), add_bos=False, special=True))
        out: list[int] = []
        while len(out) < budget:
            t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if llama_cpp.llama_vocab_is_eog(vocab, t):
                break
            out.append(t)
            llm.eval([t])
        answers.append(llm.detokenize(out).decode("utf-8", "replace"))
    assert res["task_served"]["answers"] == answers
    by_hand = CHRF().corpus_score(answers, [task.refs]).score
    assert res["task_served"]["score"] == pytest.approx(by_hand, abs=1e-9)
    assert res["task"]["answers"] != answers and res["task"]["score"] != pytest.approx(by_hand, abs=0.01)


def test_agreement_is_identical_answers_and_tokens_agreeing_before_the_first_difference():
    """One token per character: abc/abc agree entirely, abd/abc on 2 of 3 tokens, xy/xyz on 2 of the longer's 3,
    two empty answers entirely. Identical: 2 of 4; tokens before the first difference: (1 + ⅔ + ⅔ + 1) / 4."""
    from edgeq.evaluate import agreement

    class Chars:
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

    a = agreement(["abc", "abd", "xy", ""], ["abc", "abc", "xyz", ""], Chars())
    assert a.identical_pct == 50.0 and a.n == 4
    assert a.prefix_agreement_pct == pytest.approx(100 * (1 + 2 / 3 + 2 / 3 + 1) / 4)


def test_a_float_model_scored_by_llama_cpp_on_its_f16_gguf_keeps_the_transformers_score(tmp_path, default_model):
    """The build scores the merged and base models through llama.cpp on their F16 GGUF (batched, answers and NLL in
    one pass) instead of transformers in fp32. On the default model's real weights, free-text answers to 16
    held-out drone prompts (chrF: every differing character counts): the score within 1 point, the answer NLL
    within 1 %, nearly every answer identical."""
    from edgeq.evaluate import float_task_score
    from edgeq.export.gguf import write_f16_gguf
    from edgeq.task import load_task

    test = Path(__file__).parent.parent / "examples" / "drone" / "test.jsonl"
    task = load_task(test, 16, "chrf")
    write_f16_gguf(default_model, tmp_path / "m.F16.gguf")
    hf, llama = float_task_score(default_model, task), float_task_score(default_model, task, tmp_path / "m.F16.gguf")
    assert llama.score == pytest.approx(hf.score, abs=1.0) and 0 < hf.score < 100
    assert llama.answer_nll.tokens == hf.answer_nll.tokens > 0
    assert llama.answer_nll.mean_nll == pytest.approx(hf.answer_nll.mean_nll, rel=0.01)
    assert sum(a == b for a, b in zip(llama.answers, hf.answers, strict=True)) >= 14

"""`edgeq eval`: how far a GGUF or ONNX artifact drifts from its float reference.

On held-out text (and, with --data, on the task's conversations): perplexity of artifact and
reference, mean KL divergence KL(reference || artifact) per position, and top-1 agreement. With
--data also the task's exact-match score of the artifact's own greedy answers, prompts rendered
as in training; with --served as well the score of the artifact as it is served (only the user's
turns, its embedded chat template, its runtime's chat completion). Gate quality on
KLD / agreement against the model you fine-tuned, not on perplexity against the base: fine-tunes
often raise perplexity while getting better at their task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeq import report, templates
from edgeq.basemodel import load_tokenizer, resolve_model
from edgeq.config import setting
from edgeq.errors import EdgeqError
from edgeq.records import Agreement, AnswerNLL, Evaluation, Fidelity, Score
from edgeq.runtime import artifact_format, checked_adapters, fidelity_text, gguf_tokenize, task_answers, text_logits
from edgeq.serving import user_only
from edgeq.spec import FORMAT_GGUF, TASK_METRICS
from edgeq.task import METRIC_HELP, generate_hf, load_task

TEXT_TOKENS = 640  # eval and the build's sweep: mean KLD on this many tokens of the fidelity text
GATE_TOKENS = 256  # export gates: enough positions for a 99 % top-1 to mean something, quick on a CPU
TASK_TOKENS = 1024


def fidelity_ids(tok, n: int, max_positions: int | None = None) -> list[int]:
    """The first n tokens of the fidelity text; never more than the model has positions (a runtime
    may refuse longer: ONNX Runtime's rotary cache is sized by them)."""
    return tok.encode(fidelity_text(), add_special_tokens=False)[: min(n, max_positions or n)]


ANSWER_TOKENS = 64  # the most new tokens any answer is given
COMPARE_ROWS = 64  # positions compare() takes at a time: a block of float64 rows stays in cache


def compare(ref_logits: np.ndarray, art_logits: np.ndarray, ids: list[int]) -> Fidelity:
    """Fidelity of (T, vocab) artifact logits against reference logits on the same ids, in float64."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install

    if ref_logits.shape != art_logits.shape:
        raise EdgeqError(
            f"the artifact's logits have shape {art_logits.shape}, the reference's {ref_logits.shape}: "
            "they are not the same model",
            None,
            "pass the --reference the artifact was exported from",
        )
    # torch, not numpy: 2.1x the former numpy code on the slow CPU class (benchmarks/logit_paths.py); in blocks of
    # rows, so that the float64 copies of a 150k vocabulary stay small
    kld = nll_ref = nll_art = top1 = max_abs = 0.0
    nxt = torch.as_tensor([*ids[1:], 0])  # position t predicts token t+1; the last position predicts none
    for lo in range(0, len(ids), COMPARE_ROWS):
        ref = torch.from_numpy(np.asarray(ref_logits[lo : lo + COMPARE_ROWS], np.float64))
        art = torch.from_numpy(np.asarray(art_logits[lo : lo + COMPARE_ROWS], np.float64))
        p, q = torch.log_softmax(ref, -1), torch.log_softmax(art, -1)  # (rows, vocab)
        kld += float((p.exp() * (p - q)).sum())
        rows = torch.arange(min(len(ref), len(ids) - 1 - lo))  # the rows with a next token
        nll_ref -= float(p[rows, nxt[lo : lo + len(rows)]].sum())
        nll_art -= float(q[rows, nxt[lo : lo + len(rows)]].sum())
        top1 += float((ref.argmax(-1) == art.argmax(-1)).sum())
        max_abs = max(max_abs, float((ref - art).abs().max()))
    n = len(ids)
    return Fidelity(
        positions=n,
        ppl_reference=math.exp(nll_ref / (n - 1)),
        ppl_artifact=math.exp(nll_art / (n - 1)),
        mean_kld=kld / n,
        top1_agreement=top1 / n,
        max_abs_logit=max_abs,
    )


def reference_logits(model, ids: list[int]) -> np.ndarray:
    """(T, vocab) float32 logits of a loaded HF model (the precision it computes in; compare works in float64)."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def compare_texts(
    artifact: Path, references: list[np.ndarray], texts: list[list[int]], adapter: Path | None = None
) -> list[Fidelity]:
    """The one comparison every gate and eval makes: the artifact's logits (from its own runtime, with its LoRA
    `adapter` if any) against each reference's on the same text; every text in one child, the model loaded once."""
    ours = text_logits(artifact, texts, [adapter] if adapter else [])
    return [compare(r, a, ids) for r, a, ids in zip(references, ours, texts, strict=True)]


def compare_logits(artifact: Path, reference, ids: list[int], adapter: Path | None = None) -> Fidelity:
    """compare_texts on one text; reference: an HF model directory (loaded in float32), or its logits on ids."""
    if not isinstance(reference, np.ndarray):
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32).eval()
        reference = reference_logits(model, ids)
    return compare_texts(artifact, [reference], [ids], adapter)[0]


def task_text_ids(tok, task, n: int) -> list[int]:
    """The first n tokens of the held-out conversations (prompt and reference answer), each rendered with the
    chat template as in training: where the task's KLD is measured."""
    ids: list[int] = []
    for convo in task.conversations():
        if len(ids) >= n:
            break
        ids += tok.encode(templates.render(tok, convo), add_special_tokens=False)
    return ids[:n]


def rendered(tok, task) -> tuple[list[list[int]], list[list[int] | None]]:
    """Each held-out prompt's ids, rendered with the chat template as in training (generation prompt added), and the
    ids its reference answer continues them with (the whole conversation rendered, less the prompt); None where
    the whole conversation does not begin with the prompt token for token."""
    prompts, refs = [], []
    for prompt, convo in zip(task.prompts, task.conversations(), strict=True):
        head = tok.encode(templates.render(tok, prompt, True), add_special_tokens=False)
        full = tok.encode(templates.render(tok, convo), add_special_tokens=False)
        prompts.append(head)
        refs.append(full[len(head) :] if full[: len(head)] == head and len(full) > len(head) else None)
    return prompts, refs


def answer_positions(tok, task) -> tuple[list[list[int]], list[int]]:
    """Each held-out conversation's ids and where its reference answer starts (after the generation prompt)."""
    pairs = [(p + r, len(p)) for p, r in zip(*rendered(tok, task), strict=True) if r is not None]
    return [q for q, _ in pairs], [s for _, s in pairs]


def _nll_summary(r: dict, examples: int) -> AnswerNLL:
    mean = r["nll_sum"] / max(r["tokens"], 1)
    return AnswerNLL(mean, float(np.exp(mean)), r["tokens"], examples)


def artifact_task(
    path: Path, tok, task, budget: int, served: bool = False, adapter: Path | None = None
) -> tuple[Score, Score | None]:
    """The artifact's task score from its own greedy answers to the prompts rendered as in training, with the
    reference answers' NLL (teacher-forced); with `served`, its score as served too (only the user's turns, its
    own embedded template, its runtime's chat completion); a GGUF with its LoRA `adapter` applied. One child, one
    pass (runtime.task_answers)."""
    prompts, refs = rendered(tok, task)
    convos = [user_only(p) for p in task.prompts] if served else []
    r = task_answers(path, prompts, refs, convos, budget, templates.turn_ends(tok), adapter=adapter)
    answers = [tok.decode(a, skip_special_tokens=True) for a in r["answers"]]
    nll = _nll_summary(r, sum(x is not None for x in refs))
    if not served:
        return scored(task, answers, nll), None
    return scored(task, answers, nll, same_prompt_as_served=r["reused"]), scored(task, [c["text"] for c in r["served"]])


def agreement(answers: list[str], reference: list[str], tok) -> Agreement:
    """How far the artifact's greedy answers follow the float model's on the same prompts: the share of identical
    answers, and the mean share of tokens that agree before the first difference (task-independent)."""
    same = prefix = 0.0
    for a, b in zip(answers, reference, strict=True):
        ta, tb = tok.encode(a, add_special_tokens=False), tok.encode(b, add_special_tokens=False)
        same += ta == tb
        common = next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), min(len(ta), len(tb)))
        prefix += common / max(len(ta), len(tb)) if ta or tb else 1.0  # two empty answers agree entirely
    n = max(len(answers), 1)
    return Agreement(100.0 * same / n, 100.0 * prefix / n, len(answers))


def answer_budget(tok, task) -> int:
    """New tokens an answer may take: the longest reference plus a margin, at most ANSWER_TOKENS. An answer
    much longer than every reference is wrong whatever follows, and a base model rambles to the limit."""
    longest = max(len(tok.encode(r, add_special_tokens=False)) for r in task.refs)
    return min(ANSWER_TOKENS, longest + 16)


def hf_answer_nll(model, sequences: list[list[int]], starts: list[int], batch_size: int = 16) -> dict:
    """runtime.answer_nll_of for an HF model, teacher-forced in right-padded batches (a causal model's logits at
    a position never see the padding after it); the log-softmax only where an answer token is predicted.
    {"nll_sum", "tokens", "each": [(nll, tokens) of each sequence, in the order given]}"""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install

    each = [(0.0, 0)] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths: little padding
    for b in range(0, len(order), batch_size):
        part = order[b : b + batch_size]
        width = max(len(sequences[i]) for i in part)
        ids = torch.zeros((len(part), width), dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for j, i in enumerate(part):
            ids[j, : len(sequences[i])], mask[j, : len(sequences[i])] = torch.tensor(sequences[i]), 1
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, vocab)
        for j, i in enumerate(part):
            seq, start = sequences[i], starts[i]
            logp = torch.log_softmax(logits[j, start - 1 : len(seq) - 1].double(), -1)  # position t predicts t+1
            each[i] = (-float(logp[torch.arange(len(seq) - start), torch.tensor(seq[start:])].sum()), len(seq) - start)
    return {"nll_sum": sum(n for n, _ in each), "tokens": sum(t for _, t in each), "each": each}


def float_task_score(model_dir: Path, task, gguf: Path | None = None) -> Score:
    """The task score and answer NLL of a float model: through llama.cpp on its float GGUF where one is given
    (answers and NLL in one batched pass, as the artifact is scored), else in transformers (batched greedy
    generation, then batched teacher-forced forward passes)."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    if gguf is not None:
        return artifact_task(gguf, tok, task, answer_budget(tok, task))[0]
    answers = generate_hf(model_dir, task.prompts, answer_budget(tok, task))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    seqs, starts = answer_positions(tok, task)
    nll = hf_answer_nll(model, seqs, starts)
    return scored(task, answers, answer_nll=_nll_summary(nll, len(seqs)))


def scored(task, answers: list[str], answer_nll: AnswerNLL | None = None, **details) -> Score:
    """answers scored in the task's metric: a Score with the metric's own counts and any `details` beside them."""
    s = task.score(answers)
    counts = {k: v for k, v in s.items() if k not in ("metric", "why", "score")} | details
    return Score(s["metric"], s["why"], s["score"], tuple(answers), answer_nll, counts)


@dataclass(frozen=True)
class EvalConfig:
    artifact: str = setting(help="a .gguf file or an ONNX GenAI folder", argument=True)
    reference: str | None = setting(
        None, "the float HF model directory the artifact came from [default: the embedded SmolLM2-135M-Instruct]"
    )
    data: str | None = setting(None, "task JSONL: adds KLD on its text and the task score")
    limit: int | None = setting(None, "score only the first N task examples", minimum=1)
    served: bool = setting(False, "with --data: also score the artifact as served (user's turns, its own template)")
    metric: str | None = setting(None, METRIC_HELP, choices=TASK_METRICS)
    adapter: str | None = setting(
        None,
        "GGUF: a LoRA adapter for the artifact, its base (edgeq export --adapter): everything is measured with it "
        "applied; --reference is then the fine-tune's merged model",
    )


def evaluate(
    artifact: str | Path,
    reference: str | Path | None,
    data: str | Path | None = None,
    limit: int | None = None,
    served: bool = False,
    metric: str | None = None,
    adapter: str | Path | None = None,
) -> Evaluation:
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from transformers import AutoModelForCausalLM

    artifact = Path(artifact)
    fmt = artifact_format(artifact)
    task = load_task(data, limit, metric) if data else None  # refused here, before anything is generated
    adapter = Path(checked_adapters(artifact, [Path(adapter)])[0]) if adapter else None  # and a wrong adapter
    ref_dir = resolve_model(reference)
    tok = load_tokenizer(ref_dir)
    model = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()

    positions = model.config.max_position_embeddings
    text_ids = fidelity_ids(tok, TEXT_TOKENS, positions)
    if fmt == FORMAT_GGUF and gguf_tokenize(artifact, [fidelity_text()])[0][: len(text_ids)] != text_ids:
        raise EdgeqError(
            "the artifact tokenizes text differently from the reference: logits would be compared on other tokens",
            str(artifact),
            "pass the --reference the artifact was exported from",
        )
    texts = [text_ids] + ([task_text_ids(tok, task, min(TASK_TOKENS, positions))] if task else [])
    text, *task_text = compare_texts(artifact, [reference_logits(model, ids) for ids in texts], texts, adapter)
    named = str(adapter) if adapter else None
    if not task:
        return Evaluation(str(artifact), fmt, str(ref_dir), text, adapter=named)
    score, as_served = artifact_task(artifact, tok, task, answer_budget(tok, task), served, adapter)
    return Evaluation(str(artifact), fmt, str(ref_dir), text, task_text[0], score, as_served, named)


def view(r: Evaluation) -> list:
    """The fidelity table, then one line per task score and the answer NLL."""
    rows = [
        [
            name,
            f.positions,
            f"{f.ppl_reference:.3f}",
            f"{f.ppl_artifact:.3f}",
            f"{f.mean_kld:.4f}",
            f"{100 * f.top1_agreement:.1f}",
        ]
        for name, f in (("text", r.text), ("task_text", r.task_text))
        if f is not None
    ]
    columns = ["on", "positions", "PPL ref", "PPL artifact", "mean KLD", "top-1 %"]
    what = r.artifact + (f" + adapter {r.adapter}" if r.adapter else "")
    lines: list = [report.table(f"fidelity of {what}", columns, rows)]
    for s, how in ((r.task, "prompts as in training"), (r.served, "as served: user's turns, own template")):
        if s is not None:
            lines.append(f"task {s.metric} {s.score:.1f} (n={s.details['n']}; {how}; {s.why})")
    if r.task and r.task.answer_nll:
        nll = r.task.answer_nll
        lines.append(f"reference-answer NLL {nll.mean_nll:.3f} nats/token (ppl {nll.ppl:.2f})")
    return lines

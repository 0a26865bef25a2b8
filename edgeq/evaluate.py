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

from pathlib import Path

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.runtime import ASSETS, artifact_format
from edgeq.spec import FORMAT_GGUF

TEXT_TOKENS = 640
TASK_TOKENS = 1024


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def compare(ref_logits: np.ndarray, art_logits: np.ndarray, ids: list[int]) -> dict:
    """Fidelity of (T, vocab) artifact logits against reference logits on the same ids."""
    if ref_logits.shape != art_logits.shape:
        raise EdgeqError(
            f"the artifact's logits have shape {art_logits.shape}, the reference's {ref_logits.shape}: "
            "they are not the same model",
            None,
            "pass the --reference the artifact was exported from",
        )
    p, q = _log_softmax(ref_logits), _log_softmax(art_logits)
    nxt = np.asarray(ids[1:])
    nll_ref = -p[np.arange(len(nxt)), nxt]
    nll_art = -q[np.arange(len(nxt)), nxt]
    kld = (np.exp(p) * (p - q)).sum(-1)
    return {
        "positions": len(ids),
        "ppl_reference": float(np.exp(nll_ref.mean())),
        "ppl_artifact": float(np.exp(nll_art.mean())),
        "mean_kld": float(kld.mean()),
        "top1_agreement": float((ref_logits.argmax(-1) == art_logits.argmax(-1)).mean()),
    }


def artifact_logits(path: Path, fmt: str, ids: list[int]) -> np.ndarray:
    from edgeq.runtime import logits

    return logits(path, ids)


def reference_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def artifact_answers(path: Path, fmt: str, tok, prompts: list[list[dict]], max_new_tokens: int = 64) -> list[str]:
    """Greedy answers from the artifact's own runtime (in a child), prompts rendered with the model's chat template."""
    from edgeq.runtime import generate

    ids = [
        tok.encode(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
        for m in prompts
    ]
    outs = generate(path, ids, max_new_tokens, [tok.eos_token_id])
    return [tok.decode(o, skip_special_tokens=True) for o in outs]


def served_answers(path: Path, prompts: list[list[dict]], max_new_tokens: int = 64) -> list[str]:
    """Answers as the artifact is served: only the user's turns, its own embedded chat template, its runtime."""
    from edgeq.runtime import chat
    from edgeq.serving import user_only

    return [r["text"] for r in chat(path, [user_only(p) for p in prompts], max_new_tokens)]


def task_score_gguf(model_dir: Path, gguf: Path, data: str | Path, limit: int | None = None) -> dict:
    """The task score of a float model through its F16/F32 GGUF in llama.cpp (the export gates prove that GGUF
    agrees with the HF model), prompts rendered with the model's own tokenizer as the evaluation renders them."""
    from transformers import AutoTokenizer

    from edgeq.task import score, split_prompts

    prompts, refs = split_prompts(data, limit)
    tok = AutoTokenizer.from_pretrained(model_dir)
    return {**score(artifact_answers(gguf, FORMAT_GGUF, tok, prompts), refs), "model": str(model_dir)}


def evaluate(
    artifact: str | Path,
    reference: str | Path | None,
    data: str | Path | None = None,
    limit: int | None = None,
    served: bool = False,
) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeq.basemodel import resolve_model
    from edgeq.runtime import gguf_tokenize
    from edgeq.task import score, split_prompts

    artifact = Path(artifact)
    fmt = artifact_format(artifact)
    ref_dir = resolve_model(reference)
    tok = AutoTokenizer.from_pretrained(ref_dir)
    model = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()

    text = (ASSETS / "fidelity_text.txt").read_text(encoding="utf-8")
    text_ids = tok.encode(text, add_special_tokens=False)[:TEXT_TOKENS]
    if fmt == FORMAT_GGUF and gguf_tokenize(artifact, [text])[0][:TEXT_TOKENS] != text_ids:
        raise EdgeqError(
            "the artifact tokenizes text differently from the reference: logits would be compared on other tokens",
            str(artifact),
            "pass the --reference the artifact was exported from",
        )
    result = {
        "artifact": str(artifact),
        "format": fmt,
        "reference": str(ref_dir),
        "text": compare(reference_logits(model, text_ids), artifact_logits(artifact, fmt, text_ids), text_ids),
    }
    if data:
        prompts, refs = split_prompts(data, limit)
        task_ids: list[int] = []
        for p, r in zip(prompts, refs, strict=True):  # whole conversations, until TASK_TOKENS are reached
            if len(task_ids) >= TASK_TOKENS:
                break
            text = tok.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=False)
            task_ids += tok.encode(text, add_special_tokens=False)
        task_ids = task_ids[:TASK_TOKENS]
        result["task_text"] = compare(
            reference_logits(model, task_ids), artifact_logits(artifact, fmt, task_ids), task_ids
        )
        result["task"] = score(artifact_answers(artifact, fmt, tok, prompts), refs)
        if served:
            result["task_served"] = score(served_answers(artifact, prompts), refs)
    return result

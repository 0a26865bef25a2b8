"""Task accuracy: does the model answer a held-out conversation with the expected JSON action?

The scorer compares the first JSON object in the model's answer with the reference answer
(exact match of the parsed object, so key order and spacing do not matter) and counts answers
with no parseable JSON object separately.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeq.data import read_jsonl_lines
from edgeq.errors import ConfigError


def parse_action(text: str) -> dict | None:
    """The first balanced {...} in `text` that parses as a JSON object, else None."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text[start:])
            if isinstance(obj, dict):
                return obj
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    return None


def score(answers: list[str], references: list[str]) -> dict:
    exact = unparseable = 0
    for answer, ref in zip(answers, references, strict=True):
        got = parse_action(answer)
        if got is None:
            unparseable += 1
        elif got == json.loads(ref):
            exact += 1
    n = len(references)
    return {"n": n, "exact_match_pct": 100.0 * exact / n, "unparseable_pct": 100.0 * unparseable / n}


def split_prompts(path: str | Path, limit: int | None = None) -> tuple[list[list[dict]], list[str]]:
    """Conversations up to their last assistant turn, and that turn's content as the reference. Every
    reference must be a JSON object the scorer can compare with, checked before any answer is generated."""
    prompts, refs, problems = [], [], []
    for n, msgs in read_jsonl_lines(path, limit):
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        prompts.append(msgs[:last])
        refs.append(msgs[last]["content"])
        if not isinstance(_json_or_none(refs[-1]), dict):
            problems.append(f"{path}:{n}: the reference answer is not a JSON object (the task score compares actions)")
    if problems:
        raise ConfigError(problems[:20], str(path))
    return prompts, refs


def _json_or_none(text: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def generate_hf(
    model_dir: Path, prompts: list[list[dict]], max_new_tokens: int = 64, batch_size: int = 16
) -> list[str]:
    """Greedy answers from an HF model, batched with left padding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers: list[str] = []
    texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
            answers += tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


def eval_task(model_dir: Path, data: str | Path, limit: int | None = None) -> dict:
    prompts, refs = split_prompts(data, limit)
    answers = generate_hf(model_dir, prompts)
    return {
        **score(answers, refs),
        "model": str(model_dir),
        "data": str(data),
        "examples": [{"expected": r, "answer": a} for r, a in zip(refs[:5], answers[:5], strict=True)],
    }

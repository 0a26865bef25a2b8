"""The held-out task: prompts, references, the metric chosen for them (metrics.py), and the score.

A held-out JSONL holds conversations; each one's last assistant turn is the reference answer and
everything before it the prompt. The metric follows the references (JSON actions, labels, free
text) unless --metric forces one, and every reference is checked against it when the file is
read — before any answer is generated, so bad data costs seconds, not a fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeq import metrics, report, templates
from edgeq.basemodel import MODEL_HELP, load_tokenizer
from edgeq.config import setting
from edgeq.data import read_jsonl_lines
from edgeq.errors import ConfigError
from edgeq.spec import TASK_METRICS


@dataclass(frozen=True)
class Task:
    prompts: list[list[dict]]  # each conversation up to its last assistant turn
    refs: list[str]  # that turn's content
    metric: str  # metrics.METRICS
    why: str  # why this metric
    source: str

    def score(self, answers: list[str]) -> dict:
        return {**metrics.score(answers, self.refs, self.metric), "why": self.why}

    def conversations(self) -> list[list[dict]]:
        """Prompt + reference answer: what teacher-forced scoring reads."""
        return [p + [{"role": "assistant", "content": r}] for p, r in zip(self.prompts, self.refs, strict=True)]


def load_task(path: str | Path, limit: int | None = None, metric: str | None = None) -> Task:
    """Read, split and check a held-out file; the metric from the references unless forced."""
    prompts, refs, lines, problems = [], [], [], []
    for n, msgs in read_jsonl_lines(path, limit):
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        if not any(m["role"] == "user" for m in msgs[:last]):
            problems.append(f"{path}:{n}: no user message before the answer: nothing to answer")
        prompts.append(msgs[:last])
        refs.append(msgs[last]["content"])
        lines.append(n)
    if problems:
        raise ConfigError(problems[:20], str(path))
    chosen, why = metrics.choose(refs, metric)
    metrics.check(refs, lines, chosen, path)
    return Task(prompts, refs, chosen, why, str(path))


def generate_hf(
    model_dir: Path, prompts: list[list[dict]], max_new_tokens: int = 64, batch_size: int = 64
) -> list[str]:
    """Greedy answers from an HF model, batched with left padding, prompts of similar length together."""
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:  # Llama-3 has none: pad with eos, which the attention mask hides
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers: dict[int, str] = {}
    texts = [templates.render(tok, p, True) for p in prompts]
    ends = templates.turn_ends(tok)
    order = sorted(range(len(texts)), key=lambda i: len(tok.encode(texts[i], add_special_tokens=False)))
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            part = order[b : b + batch_size]
            enc = tok([texts[i] for i in part], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=ends,
                pad_token_id=tok.pad_token_id,
            )
            new = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            answers |= dict(zip(part, new, strict=True))
    return [answers[i] for i in range(len(texts))]


METRIC_HELP = "task metric [default: from the references: JSON actions → json, labels → exact, free text → chrf]"


@dataclass(frozen=True)
class TaskConfig:
    data: str = setting(help="held-out JSONL; the last assistant turn of each line is the answer")
    model: str | None = setting(None, MODEL_HELP)
    limit: int | None = setting(None, "score only the first N examples", minimum=1)
    metric: str | None = setting(None, METRIC_HELP, choices=TASK_METRICS)


def eval_task(model_dir: Path, data: str | Path, limit: int | None = None, metric: str | None = None) -> dict:
    task = load_task(data, limit, metric)  # checked before the model loads
    answers = generate_hf(model_dir, task.prompts)
    return {
        **task.score(answers),
        "model": str(model_dir),
        "data": str(data),
        "examples": [{"expected": r, "answer": a} for r, a in zip(task.refs[:5], answers[:5], strict=True)],
    }


def view(result: dict):
    return report.table(
        "task score",
        ["model", "examples", "metric", "score", "why"],
        [[result["model"], result["n"], result["metric"], f"{result['score']:.1f}", result["why"]]],
    )

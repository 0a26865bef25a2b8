"""Fine-tuning data: JSONL → token ids with a loss mask on assistant tokens only.

Each line is `{"messages": [{"role": ..., "content": ...}, ...]}` or `{"prompt": ..., "response": ...}`.
Conversations are rendered with the base model's own chat template; only the assistant turns
(their text and the end-of-turn token that stops generation) count in the loss.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from edgeq import templates
from edgeq.errors import ConfigError, UsageError
from edgeq.io import parse_json, write_text

ROLES = ("system", "user", "assistant")
IGNORE = -100  # label value that cross-entropy skips


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where the token is not predicted by the loss


@dataclass
class Dataset:
    examples: list[Example]
    truncated: int = 0  # examples longer than seq_len, cut to fit
    source: str = ""
    lines: int = 0
    stats: dict = field(default_factory=dict)


def read_jsonl(path: str | Path, limit: int | None = None) -> list[list[dict]]:
    """Parse and check every line (up to `limit` examples); one ConfigError lists every bad line."""
    return [msgs for _, msgs in read_jsonl_lines(path, limit)]


def read_jsonl_lines(path: str | Path, limit: int | None = None) -> list[tuple[int, list[dict]]]:
    """(line number, conversation) per example; raise one ConfigError listing every bad line (file:line: problem).
    Reading stops after `limit` examples: a limit never parses the rest of a large file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError("data file not found", str(path), "pass --data FILE.jsonl")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit}: need at least 1 example")
    conversations, problems = [], []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            msgs, problem = _parse_line(raw)
            if problem:
                problems.append(f"{path}:{n}: {problem}")
            elif msgs is not None:
                conversations.append((n, msgs))
            if len(problems) >= 20:
                problems.append("… stopping after 20 bad lines")
                break
            if limit is not None and len(conversations) >= limit:
                break
    if problems:
        raise ConfigError(problems, str(path))
    if not conversations:
        raise UsageError("data file has no examples", str(path), "add one JSON object per line")
    return conversations


HOLDOUT_SHARE = 0.1  # of the training data, held out for the task score when no --test-data is given
HOLDOUT_MAX = 200
HOLDOUT_SEED = 0


def split_holdout(path: str | Path, out_dir: Path) -> tuple[Path, Path, int, int]:
    """A seeded split of a JSONL file into train.jsonl and test.jsonl in `out_dir` (the lines as written):
    HOLDOUT_SHARE of the examples, at least 1 and at most HOLDOUT_MAX, held out. Returns (train, test, n_train,
    n_test). Every line is checked first (read_jsonl_lines)."""

    path = Path(path)
    examples = read_jsonl_lines(path)
    if len(examples) < 2:
        raise UsageError(
            "one example cannot be split into training and held-out data", str(path), "pass --test-data FILE.jsonl"
        )
    n_test = min(HOLDOUT_MAX, max(1, round(HOLDOUT_SHARE * len(examples))))
    order = list(range(len(examples)))
    random.Random(HOLDOUT_SEED).shuffle(order)
    held = set(order[:n_test])
    lines = path.read_bytes().split(b"\n")  # the lines read_jsonl_lines numbered: split at \n only, never at \r

    train_path, test_path = out_dir / "train.jsonl", out_dir / "test.jsonl"
    pick = [(i in held, lines[n - 1].decode("utf-8").rstrip("\r\n") + "\n") for i, (n, _) in enumerate(examples)]
    write_text(train_path, "".join(text for h, text in pick if not h))
    write_text(test_path, "".join(text for h, text in pick if h))
    return train_path, test_path, len(examples) - n_test, n_test


def _parse_line(raw: bytes) -> tuple[list[dict] | None, str | None]:
    """One JSONL line → (conversation, None), (None, problem), or (None, None) for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 (byte {e.start} of the line); save the file as UTF-8"
    if not text.strip():
        return None, None
    try:
        obj = parse_json(text)
    except ValueError as e:
        return None, f"invalid JSON ({e})"
    return _messages(obj)


def _messages(obj) -> tuple[list[dict] | None, str | None]:
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            return None, "'messages' must be a non-empty list"
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                return None, f"messages[{i}] needs string fields 'role' and 'content'"
            if m["role"] not in ROLES:
                return None, f"messages[{i}]: unknown role {m['role']!r} (expected one of {', '.join(ROLES)})"
        if not any(m["role"] == "assistant" for m in msgs):
            return None, "no assistant message: nothing to learn from"
        return [{"role": m["role"], "content": m["content"]} for m in msgs], None
    if "prompt" in obj or "response" in obj:
        if not isinstance(obj.get("prompt"), str) or not isinstance(obj.get("response"), str):
            return None, "'prompt' and 'response' must both be strings"
        return [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["response"]}], None
    return None, "missing fields: expected 'messages' or 'prompt' + 'response'"


def tokenize_conversation(tokenizer, msgs: list[dict]) -> Example:
    """Render turn by turn so each assistant span is known exactly (no re-alignment guesswork)."""
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            prompt = templates.render(tokenizer, msgs[:i], True)
            _extend(tokenizer, ids, labels, prompt[len(rendered) :], train=False)
            rendered = prompt
        full = templates.render(tokenizer, msgs[: i + 1])
        if not full.startswith(rendered):
            raise UsageError(
                "the chat template does not render conversations incrementally",
                None,
                "use a model whose template appends one turn at a time",
            )
        _extend(tokenizer, ids, labels, full[len(rendered) :], train=m["role"] == "assistant")
        rendered = full
    return Example(ids, labels)


def _extend(tokenizer, ids: list[int], labels: list[int], text: str, train: bool) -> None:
    if not text:
        return
    new = tokenizer.encode(text, add_special_tokens=False)
    ids.extend(new)
    labels.extend(new if train else [IGNORE] * len(new))


def load_dataset(path: str | Path, tokenizer, seq_len: int, strict: bool = False) -> Dataset:
    conversations = read_jsonl(path)
    examples, truncated, too_long = [], 0, []
    for n, msgs in enumerate(conversations, 1):
        ex = tokenize_conversation(tokenizer, msgs)
        if len(ex.input_ids) > seq_len:
            if strict:
                too_long.append(f"example {n}: {len(ex.input_ids)} tokens > --seq-len {seq_len}")
                continue
            truncated += 1
            ex = Example(ex.input_ids[:seq_len], ex.labels[:seq_len])
        if all(v == IGNORE for v in ex.labels[1:]):
            continue  # truncation cut every assistant token: nothing to learn
        examples.append(ex)
    if too_long:
        raise ConfigError(too_long[:20], str(path))
    if not examples:
        raise UsageError("no example keeps an assistant token within --seq-len", str(path), "raise --seq-len")
    lengths = sorted(len(e.input_ids) for e in examples)
    stats = {
        "examples": len(examples),
        "tokens": sum(lengths),
        "max_len": lengths[-1],
        "median_len": lengths[len(lengths) // 2],
        "loss_tokens": sum(sum(v != IGNORE for v in e.labels[1:]) for e in examples),
    }
    return Dataset(examples, truncated, str(path), len(conversations), stats)

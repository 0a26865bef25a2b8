"""Task metrics, chosen from the data: what "task accuracy" means for this fine-tune.

  json   every reference is a JSON object or array: the first JSON value in the answer, parsed, equals
         the reference, parsed (key order and spacing do not matter); answers with none are counted
  exact  short answers and labels (every reference at most SHORT_WORDS words): exact match after
         normalising case, surrounding space and punctuation, and inner whitespace
  chrf   free text: chrF (character n-gram F-score, sacrebleu) of the answers against the references

Every score is 0–100 and higher is better, so a profile's `max_task_accuracy_drop_points` reads the
same way for each: points of the chosen metric the artifact may lose against the float model.
`--metric` forces one; a metric forced onto data it cannot score is refused before any generation.
"""

from __future__ import annotations

import json
import re
import unicodedata

from edgeq.errors import ConfigError
from edgeq.spec import TASK_METRICS as METRICS

SHORT_WORDS = 4
_PUNCT_EDGES = re.compile(r"^[\W_]+|[\W_]+$")


def parse_json_value(text: str):
    """The first balanced {...} or [...] in `text` that parses as JSON, else None."""
    decoder = json.JSONDecoder()
    for start, ch in enumerate(text):
        if ch in "{[":
            try:
                return decoder.raw_decode(text[start:])[0]
            except (ValueError, RecursionError):  # ValueError: also an integer past Python's digit limit
                continue
    return None


def _reference(ref: str):
    """A reference as JSON, or None where it is not JSON (a forced --metric json on free text)."""
    try:
        return json.loads(ref)
    except (ValueError, RecursionError):
        return None


def _is_structured(ref: str):
    return isinstance(_reference(ref), (dict, list))


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return _PUNCT_EDGES.sub("", " ".join(text.split()))


def choose(refs: list[str], forced: str | None = None) -> tuple[str, str]:
    """(metric, why) for these references."""
    if forced is not None:
        return forced, "forced with --metric"
    if refs and all(_is_structured(r) for r in refs):
        return "json", "every reference is a JSON object or array: parsed exact match"
    longest = max((len(r.split()) for r in refs), default=0)
    if longest <= SHORT_WORDS:
        return (
            "exact",
            f"every reference has at most {SHORT_WORDS} words (labels, short answers): normalised exact match",
        )
    return "chrf", f"free-text references (up to {longest} words): chrF against the reference"


def check(refs: list[str], lines: list[int], metric: str, path) -> None:
    """Refuse, before anything is generated, references this metric cannot score (file:line each)."""
    if metric not in METRICS:
        raise ConfigError([f"--metric {metric!r}: expected one of {', '.join(METRICS)}"], "task options")
    problems = [f"{path}:{n}: the reference answer is empty" for r, n in zip(refs, lines, strict=True) if not r.strip()]
    if metric == "json":
        problems += [
            f"{path}:{n}: the reference answer is not a JSON object or array (metric json)"
            for r, n in zip(refs, lines, strict=True)
            if r.strip() and not _is_structured(r)
        ]
    if problems:
        raise ConfigError(problems[:20] + (["…"] if len(problems) > 20 else []), str(path))


def score(answers: list[str], refs: list[str], metric: str) -> dict:
    """{"metric", "score" (0–100), "n"} plus what the metric counts besides."""
    n = len(refs)
    if metric == "json":
        got = [parse_json_value(a) for a in answers]
        exact = sum(g is not None and g == _reference(r) for g, r in zip(got, refs, strict=True))
        unparseable = sum(g is None for g in got)
        return {"metric": metric, "score": 100.0 * exact / n, "n": n, "unparseable_pct": 100.0 * unparseable / n}
    if metric == "exact":
        exact = sum(normalise(a) == normalise(r) for a, r in zip(answers, refs, strict=True))
        return {"metric": metric, "score": 100.0 * exact / n, "n": n}
    from sacrebleu.metrics import CHRF  # deferred: the workstation toolchain, absent from the runtime-only install

    return {"metric": metric, "score": float(CHRF().corpus_score(answers, [refs]).score), "n": n}

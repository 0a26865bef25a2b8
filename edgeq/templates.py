"""Chat templates rendered with a limit: a model's template is Jinja code from a file, and edgeq runs it.

transformers renders templates in a sandbox (no file or attribute access), but a sandbox bounds neither
time nor output: `{% for i in range(99999) %}{% for j in range(99999) %}…` never finishes, and it runs in
edgeq's own process (fine-tune, merge, eval-task, build --dry-run). Every render goes through `render`:
a wall-clock limit (SIGALRM, on the main thread; a worker thread renders without one), an output limit,
and one line for a template that fails, is missing, or is a set of named templates with no default.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from edgeq.errors import UsageError

RENDER_TIMEOUT_S = 10.0  # one conversation: real templates render in well under a millisecond
OUTPUT_FACTOR, OUTPUT_SLACK = 16, 1 << 20  # the rendered text may hold 16× the messages' text, plus 1 MiB
_FIX = "fix the model's chat template (chat_template.jinja or tokenizer_config.json)"


class _Timeout(Exception):
    pass


def template_of(tok, where: str | None = None) -> str:
    """The model's one chat template: a plain template, or the 'default' of a set of named ones."""
    t = tok.chat_template
    if isinstance(t, dict):
        if isinstance(t.get("default"), str):
            return t["default"]
        names = ", ".join(sorted(map(str, t))[:8])
        raise UsageError(f"the model has named chat templates ({names}) and none is 'default'", where, _FIX)
    if not isinstance(t, str) or not t.strip():
        raise UsageError("the model has no chat template", where, "add chat_template.jinja beside the tokenizer")
    return t


@contextlib.contextmanager
def _time_limit(seconds: float):
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _Timeout

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def render(
    tok, messages: list[dict], add_generation_prompt: bool = False, template: str | None = None, where=None
) -> str:
    """The conversation as the model's template (or `template`) writes it, within RENDER_TIMEOUT_S and an output
    limit; every failure is one UsageError naming the model."""
    template = template if template is not None else template_of(tok, where)
    budget = OUTPUT_FACTOR * sum(len(m.get("content") or "") for m in messages) + OUTPUT_SLACK
    try:
        with _time_limit(RENDER_TIMEOUT_S):
            text = tok.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
            )
    except _Timeout:
        raise UsageError(f"the chat template did not finish within {RENDER_TIMEOUT_S:g} s", where, _FIX) from None
    except MemoryError:
        raise UsageError("the chat template tried to build an output larger than memory", where, _FIX) from None
    except Exception as e:  # noqa: BLE001 - a template is arbitrary Jinja: any failure is the template's
        raise UsageError(f"the chat template failed: {type(e).__name__}: {str(e)[:200]}", where, _FIX) from None
    if not isinstance(text, str):
        raise UsageError("the chat template rendered no text", where, _FIX)
    if len(text) > budget:
        raise UsageError(f"the chat template wrote {len(text)} characters for {len(messages)} messages", where, _FIX)
    return text


_ANSWER = "edgeq-answer"  # text no template writes itself: what follows it is what ends an assistant turn


def turn_ends(tok) -> list[int]:
    """The tokens that end an answer: eos, and the special token the model's template writes right after an
    assistant turn (Llama-3's <|eot_id|>, Gemma's <end_of_turn>, ChatML's <|im_end|>). Fine-tuning teaches the
    model to emit that token, so every generation edgeq scores stops there, as llama.cpp and Ollama do."""
    ends = [tok.eos_token_id] if tok.eos_token_id is not None else []
    if not tok.chat_template:  # a base model: nothing but eos ends its text
        return ends
    convo = [{"role": "user", "content": "U"}, {"role": "assistant", "content": _ANSWER}]
    text = render(tok, convo)
    if _ANSWER not in text:  # a template that drops answers teaches no end of turn
        return ends
    ids = tok.encode(text.split(_ANSWER, 1)[1], add_special_tokens=False)
    # special: named in the config (Gemma lists <end_of_turn> there) or only flagged so among the added tokens
    # (Llama-3's base names <|end_of_text|> as eos and flags <|eot_id|> in tokenizer.json alone)
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    if ids and ids[0] in special and ids[0] not in ends:
        ends.append(ids[0])
    return ends

"""Served as scored: the system prompt a fine-tune was trained with becomes its artifact's default.

A fine-tune is trained and scored on conversations that carry the training data's system prompt.
Served the usual way — Ollama, llama-server, an app calling ONNX Runtime GenAI's chat template —
it receives only the user's message, and the base template's own default system prompt fills in
("You are a helpful AI assistant named SmolLM…"): not the model that was scored. So edgeq writes
the training prompt into the chat template itself (the GGUF's tokenizer.chat_template, the ONNX
folder's chat_template.jinja, the Modelfile's SYSTEM follow from it), and scores the artifact the
way it is served.

Which prompt: the system prompt of the most conversations, when it opens at least half of them
(DOMINANT_SHARE). How it is embedded: where the base template spells its default as a literal,
that literal is replaced; otherwise a short preamble inserts the prompt when a conversation has
none. Either way the new template is checked by rendering: a user-only conversation gets the
training prompt, a conversation with its own system prompt renders exactly as before.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

from edgeq import templates
from edgeq.errors import UsageError

DOMINANT_SHARE = 0.5
_SENTINEL = "\x00edgeq-system\x00"
_PROBE_USER = "Hello."


@dataclass(frozen=True)
class SystemPrompt:
    text: str | None  # None: the base template's own default stays
    source: str  # "training data", "--system-prompt", "base template"
    why: str

    def as_dict(self) -> dict:
        return asdict(self)


def from_training(conversations: list[list[dict]], override: str | None = None) -> SystemPrompt:
    """The deployment default: --system-prompt wins ('' keeps the base's); else the dominant training prompt."""
    if override is not None:
        if override == "":
            return SystemPrompt(None, "--system-prompt", "--system-prompt '' keeps the base template's default")
        return SystemPrompt(override, "--system-prompt", "given with --system-prompt")
    firsts = Counter(c[0]["content"] for c in conversations if c and c[0]["role"] == "system")
    if not firsts:
        return SystemPrompt(None, "base template", "the training conversations carry no system prompt")
    text, count = firsts.most_common(1)[0]
    share = count / len(conversations)
    why = f"opens {count} of {len(conversations)} training conversations ({share:.0%})"
    if share < DOMINANT_SHARE:
        return SystemPrompt(None, "base template", f"no dominant system prompt: the most common {why}")
    return SystemPrompt(text, "training data", why)


def _render(template: str, messages: list[dict], tok) -> str:
    return templates.render(tok, messages, True, template)


def default_system(template: str, tok) -> str | None:
    """The system prompt `template` puts in front of a conversation that has none (None if it adds none)."""
    with_system = _render(
        template, [{"role": "system", "content": _SENTINEL}, {"role": "user", "content": _PROBE_USER}], tok
    )
    alone = _render(template, [{"role": "user", "content": _PROBE_USER}], tok)
    if _SENTINEL not in with_system:
        return None
    pre, post = with_system.split(_SENTINEL, 1)
    if not alone.startswith(pre):
        return None
    end = alone.find(post, len(pre))
    return alone[len(pre) : end] if end >= 0 else None


def _jinja_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def embed(template: str, system: str, tok) -> str:
    """`template` with `system` as its default system prompt, verified by rendering (UsageError if it cannot be)."""
    old = default_system(template, tok)
    candidates = []
    if old and template.count(old) == 1:  # the default is spelled as a literal: replace it in place
        candidates.append(template.replace(old, _jinja_literal(system)))
    candidates.append(
        "{%- if not messages or messages[0]['role'] != 'system' -%}"
        "{%- set messages = [{'role': 'system', 'content': '" + _jinja_literal(system) + "'}] + messages -%}"
        "{%- endif -%}" + template
    )
    convo = [{"role": "system", "content": "Other."}, {"role": "user", "content": _PROBE_USER}]
    for new in candidates:
        if default_system(new, tok) == system and _render(new, convo, tok) == _render(template, convo, tok):
            return new
    raise UsageError(
        "the chat template cannot be given a default system prompt that renders as trained",
        "the model's chat template",
        "pass --system-prompt '' to keep the base template's default",
    )


def user_only(prompt: list[dict]) -> list[dict]:
    """A held-out prompt as an operator sends it: no system message (the artifact's template supplies it)."""
    return [m for m in prompt if m["role"] != "system"]

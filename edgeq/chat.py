"""`edgeq run ARTIFACT [PROMPT]`: talk to an artifact the way it is served.

The artifact's own runtime and its embedded chat template, the user's turns only (plus --system
when given), greedy unless --temperature says otherwise, tokens streamed as they come and tok/s at
the end. With a PROMPT: one answer. Without: a loop on the terminal (line editing and history from
readline, Ctrl-D quits), the conversation kept across turns. The session runs in a child process
attached to this terminal, so a crash of the runtime is one line, not a dead shell.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgeq import child
from edgeq.config import setting
from edgeq.errors import UsageError
from edgeq.runtime import (
    checked_adapters,
    checked_artifact,
    llama_setup,
    load_adapters_here,
    load_gguf_here,
    use_adapter_here,
)
from edgeq.spec import FORMAT_GGUF


@dataclass
class RunConfig:
    artifact: str = setting(help="a .gguf file or an ONNX GenAI folder", argument=True)
    prompt: str | None = setting(None, "one message; none: an interactive loop", argument=True)
    system: str | None = setting(None, "system prompt [default: the one the artifact's template carries]")
    max_tokens: int = setting(256, "longest answer in tokens", minimum=1, maximum=1 << 20)
    temperature: float = setting(0.0, "0 = greedy, as edgeq scores the artifact", minimum=0, maximum=100)
    ctx: int = setting(2048, "context window in tokens", minimum=16, maximum=1 << 20)
    adapter: tuple[str, ...] = setting(
        (),
        "a GGUF LoRA adapter for the artifact, its base (edgeq export --adapter); repeat it to load several once: the "
        "first is applied, `/adapter NAME` switches (NAME: the file's name without .gguf), `/adapter none` removes it",
        repeated=True,
    )


def run(cfg: RunConfig) -> None:

    if not (1 <= cfg.max_tokens <= 1 << 20 and 0 <= cfg.temperature <= 100 and 16 <= cfg.ctx <= 1 << 20):
        raise UsageError("need --max-tokens in [1, 2^20], --temperature in [0, 100] and --ctx in [16, 2^20]")
    path, fmt = checked_artifact(Path(cfg.artifact))
    adapters = checked_adapters(path, [Path(a) for a in cfg.adapter])
    names = [adapter_name(a) for a in adapters]
    if len(set(names)) != len(names):
        raise UsageError("two adapters share a name", ", ".join(adapters), "give each adapter file its own name")
    child.call_attached(
        "edgeq.chat:session_here",
        "the chat session",
        str(path),
        setup=llama_setup() if fmt == FORMAT_GGUF else None,
        path=path,
        fmt=fmt,
        prompt=cfg.prompt,
        system=cfg.system,
        max_tokens=cfg.max_tokens,
        temperature=cfg.temperature,
        ctx=cfg.ctx,
        adapters=adapters,
    )


def adapter_name(path: str) -> str:
    """What `/adapter NAME` calls an adapter: its file's name without .gguf."""
    name = Path(path).name
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


def _turns(prompt: str | None):
    if prompt is not None:
        yield prompt
        return
    import readline  # noqa: F401 - line editing and history for input()

    print("edgeq run: type a message, Ctrl-D to quit", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return
        if line.strip():
            yield line


def _too_long(detail: str, path: str, ctx: int) -> UsageError:
    return UsageError(f"the conversation does not fit the context ({detail})", path, f"raise --ctx above {ctx}")


def _gguf_stream(path: str, ctx: int, max_tokens: int, temperature: float, adapters: list[str]):

    llm = load_gguf_here(Path(path), n_ctx=ctx)
    loaded = dict(zip(map(adapter_name, adapters), load_adapters_here(llm, adapters), strict=True))
    if loaded:
        use_adapter_here(llm, next(iter(loaded.values())))

    def switch(name: str) -> str:
        if name != "none" and name not in loaded:
            return f"no adapter {name!r}: {', '.join([*loaded, 'none'])}"
        use_adapter_here(llm, loaded.get(name))
        return f"adapter: {name}"

    def answer(messages):
        try:
            top_k = 1 if temperature == 0 else 40
            chunks = llm.create_chat_completion(
                messages, max_tokens=max_tokens, temperature=temperature, top_k=top_k, stream=True
            )
            for chunk in chunks:
                text = chunk["choices"][0]["delta"].get("content")
                if text:
                    yield text
        except ValueError as e:  # llama-cpp-python: "Requested tokens (N) exceed context window of M"
            if "context window" not in str(e):
                raise
            raise _too_long(str(e), path, ctx) from None

    return answer, switch


def _onnx_stream(path: str, ctx: int, max_tokens: int, temperature: float):
    import onnxruntime_genai as og  # deferred: a native runtime, loaded only where it runs

    model = og.Model(path)
    tok = og.Tokenizer(model)

    def answer(messages):
        ids = tok.encode(tok.apply_chat_template(json.dumps(messages), add_generation_prompt=True))
        if len(ids) >= ctx:
            raise _too_long(f"{len(ids)} tokens", path, ctx)
        params = og.GeneratorParams(model)
        params.set_search_options(
            max_length=min(ctx, len(ids) + max_tokens), do_sample=temperature > 0, temperature=temperature or 1.0
        )
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        stream = tok.create_stream()
        while not gen.is_done():
            gen.generate_next_token()
            yield stream.decode(gen.get_next_tokens()[0])

    return answer, None


def session_here(
    path: str,
    fmt: str,
    prompt: str | None,
    system: str | None,
    max_tokens: int,
    temperature: float,
    ctx: int,
    adapters: list[str] = (),
) -> None:
    """In the child, on the user's terminal: one answer or a loop, streamed."""
    if fmt == FORMAT_GGUF:
        answer, switch = _gguf_stream(path, ctx, max_tokens, temperature, adapters)
    else:
        answer, switch = _onnx_stream(path, ctx, max_tokens, temperature)
    messages = [{"role": "system", "content": system}] if system is not None else []
    for text in _turns(prompt):
        if switch and text.startswith("/adapter "):
            print(switch(text.removeprefix("/adapter ").strip()), file=sys.stderr)
            continue
        messages.append({"role": "user", "content": text})
        t0, first, pieces = time.perf_counter(), None, []
        for piece in answer(messages):
            first = first or time.perf_counter()
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        end = time.perf_counter()
        sys.stdout.write("\n")
        rate = (len(pieces) - 1) / (end - first) if first and len(pieces) > 1 and end > first else 0.0
        ttft = 1000 * ((first or end) - t0)
        print(f"[{len(pieces)} tokens; first after {ttft:.0f} ms, then {rate:.1f} tok/s]", file=sys.stderr)
        messages.append({"role": "assistant", "content": "".join(pieces)})

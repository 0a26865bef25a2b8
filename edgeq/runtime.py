"""Run artifacts: a GGUF through llama-cpp-python, an ONNX folder through ONNX Runtime (GenAI).

Runtime-only: never imports torch or transformers, so `edgeq bench` and `edgeq eval` of an
artifact work on a target with the runtime install. Every call into native code goes through a
child process (child.py): the public functions here are the parent's side, the `*_here`
functions run inside the child. GGUF files are header-checked in Python (ggufcheck) and ONNX
folders validated (onnxcheck) before the child lets native code open them, and llama.cpp is
configured as this machine's probe decided (probe.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
from importlib.resources import files
from pathlib import Path

import numpy as np

from edgeq import child, decode, probe
from edgeq.errors import EdgeqError, UsageError
from edgeq.ggufcheck import check_adapter, check_gguf
from edgeq.machine import cores
from edgeq.onnxcheck import check_onnx_folder
from edgeq.probe import llama_setup as setup
from edgeq.probe import tiny_gguf
from edgeq.spec import FORMAT_GGUF, FORMAT_ONNX, QUANT_TYPES

ASSETS = Path(str(files("edgeq") / "assets"))  # package data: tokenizer corpus, fidelity text, calibrations


def fidelity_text() -> str:
    """The fixed English text of every logit comparison (gates, sweep, eval) and of bench's prompts."""
    return (ASSETS / "fidelity_text.txt").read_text(encoding="utf-8")


def pricing_text() -> str:
    """Other English prose (everyday topics, a dialogue), which a mixed recipe's per-group KLD is measured on
    beside the task data: never the fidelity text, so that what chooses a mixture is not what scores it."""
    return (ASSETS / "pricing_text.txt").read_text(encoding="utf-8")


def artifact_format(path: str | Path) -> str:
    """gguf for a .gguf file, onnx for an ONNX Runtime GenAI folder; anything else is a usage error."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return FORMAT_GGUF
    if path.is_dir() and (path / "genai_config.json").is_file():
        check_onnx_dir(path)  # before ONNX Runtime reads it: no custom ops, nothing outside the folder
        return FORMAT_ONNX
    if not path.exists():
        raise UsageError("artifact not found", str(path), "pass a .gguf file or an ONNX GenAI folder")
    if path.is_dir():
        check_onnx_dir(path)
    raise UsageError(
        "unknown artifact format",
        str(path),
        "expected a .gguf file or a folder with genai_config.json (ONNX Runtime GenAI)",
    )


def artifact_bytes(path: str | Path) -> int:
    """Bytes on disk of a GGUF file or of every file in an ONNX folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_onnx_dir(path: str | Path) -> Path:

    return check_onnx_folder(Path(path))


def llama_config() -> dict:
    return probe.llama_config().as_dict()


def checked_artifact(path: Path) -> tuple[Path, str]:
    """The artifact and its format, its header or folder validated before native code reads it."""
    fmt = artifact_format(path)
    if fmt == FORMAT_GGUF:
        check_gguf(path)
    return path, fmt


def checked_adapters(base: Path, adapters: list[Path]) -> list[str]:
    """GGUF LoRA adapters, each header validated and checked to fit `base` (a GGUF) before llama.cpp reads it."""
    if adapters and artifact_format(base) != FORMAT_GGUF:
        raise UsageError("LoRA adapters apply to a GGUF base", str(base), "pass the GGUF of the adapters' base")
    for a in adapters:
        check_adapter(check_gguf(base), check_gguf(Path(a)), str(a))
    return [str(Path(a).resolve()) for a in adapters]  # a child runs in a folder of its own


# ---------------------------------------------------------------------------------------------
# the parent's side: one child per call


def text_logits(path: str | Path, texts: list[list[int]], adapters: list[Path] = ()) -> list[np.ndarray]:
    """(T, vocab) float32 logits (the runtimes' own precision) of a GGUF or an ONNX artifact for every position of
    each token list in `texts`, in one child that loads the model once; a GGUF with its LoRA `adapters` applied
    (each checked against it first)."""
    path, fmt = checked_artifact(Path(path))
    adapters = checked_adapters(path, adapters)
    if fmt == FORMAT_GGUF:
        return child_call("gguf_logits_here", "computing logits", path, path=path, texts=texts, adapters=adapters)
    return child_call("onnx_logits_here", "computing logits", path, path=path, texts=texts)


def logits(path: str | Path, ids: list[int], adapters: list[Path] = ()) -> np.ndarray:
    """text_logits of one token list."""
    return text_logits(path, [ids], adapters)[0]


def generate(path: str | Path, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int]) -> list[list[int]]:
    """Greedy continuation of each prompt (token ids), stopping at any of `stop_ids` (not included)."""
    path, fmt = checked_artifact(Path(path))
    op = "gguf_generate_here" if fmt == FORMAT_GGUF else "onnx_generate_here"
    return child_call(
        op, "generating", path, path=path, prompts=prompts, max_new_tokens=max_new_tokens, stop_ids=stop_ids
    )


def task_answers(
    path: str | Path,
    prompts: list[list[int]],
    refs: list[list[int] | None],
    conversations: list[list[dict]],
    max_new_tokens: int,
    stop_ids: list[int],
    adapter: Path | None = None,
) -> dict:
    """All the eval asks of an artifact on a held-out task, in one child: each prompt's greedy answer (token ids,
    stopping before any of `stop_ids`), the teacher-forced NLL of each reference continuation given (None: not
    scored), and each conversation answered as served (as chat() does; prompt i's answer is reused for
    conversation i where the served prompt is the same ids); a GGUF with its LoRA `adapter` applied (checked
    against it first). {"answers", "nll_sum", "tokens", "served", "reused"}"""
    path, fmt = checked_artifact(Path(path))
    op = "gguf_task_here" if fmt == FORMAT_GGUF else "onnx_task_here"
    kw = {"prompts": prompts, "refs": refs, "conversations": conversations, "max_new_tokens": max_new_tokens}
    if adapter is not None:
        kw["adapter"] = checked_adapters(path, [adapter])[0]
    return child_call(op, "answering the held-out task", path, path=path, stop_ids=stop_ids, **kw)


def chat(path: str | Path, conversations: list[list[dict]], max_tokens: int) -> list[dict]:
    """Each conversation answered as the artifact is served: its runtime's chat completion with the artifact's
    own embedded template (llama.cpp for GGUF, ONNX Runtime GenAI for ONNX), greedy.
    [{"text", "finish_reason", "completion_tokens", "prompt_ids": the rendered prompt's token ids}]"""
    path, fmt = checked_artifact(Path(path))
    op = "gguf_chat_here" if fmt == FORMAT_GGUF else "onnx_chat_here"
    return child_call(op, "a chat completion", path, path=path, conversations=conversations, max_tokens=max_tokens)


def gguf_tokenize(path: str | Path, texts: list[str]) -> list[list[int]]:
    """llama.cpp's own tokenization of each text (special tokens parsed, no BOS added)."""
    path, _ = checked_artifact(Path(path))
    return child_call("gguf_tokenize_here", "tokenizing", path, path=path, texts=texts)


def gguf_is_eog(path: str | Path, token_ids: list[int]) -> list[bool]:
    """Whether llama.cpp ends generation at each of these tokens (the vocabulary read once)."""
    path, _ = checked_artifact(Path(path))
    return child_call("gguf_is_eog_here", "reading the vocabulary", path, path=path, token_ids=token_ids)


def quantize(src: Path, dst: Path, quant: str, imatrix: dict | None = None, recipe: dict | None = None) -> None:
    """llama.cpp's own quantizer from a float GGUF, with an importance matrix and a per-tensor recipe
    ({tensor: ggml type}, mixed.py) if given."""

    check_gguf(src)
    what = f"quantizing to {quant}" + (" with a per-tensor recipe" if recipe else "")
    child_call("quantize_here", what, src, src=src, dst=dst, quant=quant, imatrix=imatrix, recipe=recipe)


def quantized_logits(
    src: Path, dst: Path, quant: str, imatrix: dict | None, recipe: dict | None, texts: list[list[int]]
) -> list[np.ndarray]:
    """quantize() to `dst`, then text_logits() of it, in one child (one interpreter and one llama.cpp start instead
    of two: a mixed recipe's pricing does this once per tensor group); `dst` is removed before it returns."""

    check_gguf(src)
    what = f"quantizing to {quant} and computing its logits"
    kw = {"src": src, "dst": dst, "quant": quant, "imatrix": imatrix, "recipe": recipe, "texts": texts}
    try:
        return child_call("quantized_logits_here", what, src, **kw)
    finally:
        dst.unlink(missing_ok=True)  # also where the child died between writing and reading it


def quantize_plan(src: Path, quant: str, recipe: dict | None = None) -> list[str]:
    """llama.cpp's quantizer in dry-run mode: its log, which names each tensor's chosen type."""

    check_gguf(src)
    kw = {"src": src, "dst": None, "quant": quant, "dry_run": True, "recipe": recipe}
    return child_call("quantize_here", f"planning {quant}", src, **kw)


def child_call(func: str, what: str, where: Path, **kwargs):

    return child.call(f"edgeq.runtime:{func}", what, str(where), setup=llama_setup(), **kwargs)


def llama_setup(cfg: dict | None = None) -> tuple[str, dict]:
    """The child job that configures llama.cpp before an op: this machine's configuration unless given."""

    return setup(llama_config() if cfg is None else cfg)


# ---------------------------------------------------------------------------------------------
# the child's side


def decode_probe_here(work: str, types: list[str]) -> dict:
    """The probe model (probe.tiny_gguf) quantized to each type and greedy-decoded for 8 tokens; that a
    result reaches the parent means no type crashed."""

    src = tiny_gguf(Path(work) / "probe.F32.gguf")
    out = {}
    for q in types:
        dst = Path(work) / f"probe.{q}.gguf"
        quantize_here(src, dst, q)
        out[q] = gguf_generate_here(dst, [[1, 40, 41, 42]], max_new_tokens=8, stop_ids=[])[0]
    return out


def configure_llama(cfg: dict) -> None:
    """Make every model this process loads use `cfg` (probe.LlamaConfig): llama-cpp-python's Llama takes
    its model parameters from llama_model_default_params(), which has no keyword for extra buffer types."""
    import llama_cpp.llama_cpp as lc  # deferred: a native runtime, loaded only where it runs

    default = lc.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = cfg["extra_buffer_types"]
        return p

    lc.llama_model_default_params = params


def load_gguf_here(path: Path, n_ctx: int = 2048, logits_all: bool = False, n_threads: int | None = None, **kw):
    from llama_cpp import Llama  # deferred: a native runtime, loaded only where it runs

    check_gguf(path)
    return Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, n_threads=n_threads or cores(), verbose=False, **kw)


def load_adapters_here(llm, paths: list[str]) -> list:
    """Each GGUF LoRA adapter loaded once beside the model (freed with it); none applied yet (use_adapter_here)."""
    import llama_cpp  # deferred: a native runtime, loaded only where it runs

    loaded = []
    for p in paths:
        adapter = llama_cpp.llama_adapter_lora_init(llm._model.model, p.encode())
        if adapter is None:
            raise EdgeqError("llama.cpp could not load the adapter", p, "re-export it: edgeq export --adapter RUN")
        llm._stack.callback(llama_cpp.llama_adapter_lora_free, adapter)
        loaded.append(adapter)
    return loaded


def use_adapter_here(llm, adapter, scale: float = 1.0) -> None:
    """Apply one loaded adapter (None: the bare base) and forget the cached prompt: tokens evaluated under another
    adapter must not be reused."""
    import llama_cpp  # deferred: a native runtime, loaded only where it runs

    chosen = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter) if adapter is not None else None
    scales = (ctypes.c_float * 1)(scale) if adapter is not None else None
    if llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, chosen, int(adapter is not None), scales):
        raise EdgeqError("llama.cpp could not apply the adapter", None, "re-export it: edgeq export --adapter RUN")
    llm.reset()


def apply_adapters(llm, paths: list[str]) -> None:
    """The one adapter `paths` names, applied (logits and answers of one base + adapter pair)."""
    if len(paths) > 1:
        raise UsageError("one adapter at a time here", ", ".join(paths), "pass one --adapter")
    if paths:
        use_adapter_here(llm, load_adapters_here(llm, paths)[0])


def gguf_logits_here(path: str, texts: list[list[int]], adapters: list[str] = ()) -> list[np.ndarray]:
    llm = load_gguf_here(Path(path), n_ctx=max(512, *map(len, texts)), logits_all=True)
    apply_adapters(llm, adapters)
    out = []
    for ids in texts:
        llm.reset()  # each text from position 0: no prompt cache carried between them
        llm.eval(ids)
        out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    return out


def quantized_logits_here(src: str, dst: str, quant: str, imatrix, recipe, texts: list[list[int]]) -> list[np.ndarray]:
    quantize_here(src, dst, quant, imatrix, recipe=recipe)
    return gguf_logits_here(dst, texts)  # header-checked first, as every GGUF this child opens


def answer_nll_of(logits_of, sequences: list[list[int]], starts: list[int]) -> dict:
    """Σ −log p(token) over each sequence's tokens from its start on; `logits_of(ids)` → (T, vocab) logits.
    Pure numpy, in the child that holds the artifact (evaluate.hf_answer_nll does the same for an HF model)."""
    total, count = 0.0, 0
    for ids, start in zip(sequences, starts, strict=True):
        x = np.asarray(logits_of(ids)[start - 1 : len(ids) - 1], np.float64)  # (answer tokens, vocab): t predicts t+1
        x = x - x.max(-1, keepdims=True)
        logp = x - np.log(np.exp(x).sum(-1, keepdims=True))  # (T, vocab)
        targets = np.asarray(ids[start:])
        total -= float(logp[np.arange(len(targets)), targets].sum())
        count += len(targets)
    return {"nll_sum": total, "tokens": count}


def gguf_generate_here(path: str, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int]) -> list:
    return [a["ids"] for a in decode.answers_here(path, prompts, max_new_tokens, stop_ids)]


class _Rendered(Exception):
    """Carries the prompt ids out of a chat completion at the moment it would start decoding."""


def served_prompt_here(llm, messages: list[dict]) -> list[int]:
    """The token ids llama-cpp-python's chat completion feeds for `messages`: its own choice of the GGUF's template,
    its rendering and tokenization, captured where it hands them to the completion (which never runs)."""

    def render_only(prompt, **kwargs):
        raise _Rendered(prompt)

    llm.create_completion = render_only  # this instance only: the handler calls llama.create_completion(prompt=…)
    try:
        llm.create_chat_completion(messages, max_tokens=1, temperature=0.0, top_k=1)
    except _Rendered as r:
        return [int(t) for t in r.args[0]]
    raise AssertionError("the chat completion never reached its prompt")


def eog_ids_here(llm) -> set[int]:
    """Every token llama.cpp ends generation at (end of turn, end of text, …)."""
    import llama_cpp  # deferred: a native runtime, loaded only where it runs

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return {t for t in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, t)}


def gguf_task_here(
    path: str, prompts: list, refs: list, conversations: list, max_new_tokens: int, stop_ids, adapter: str | None = None
) -> dict:
    """runtime.task_answers for a GGUF, in one batched pass (decode.py): each prompt's greedy answer and its
    reference's NLL, and each conversation as served: the prompt the chat completion renders, greedy until an
    end-of-generation token or max_new_tokens, as llama-cpp-python's completion decodes it. A served prompt that is
    the evaluated prompt token for token is decoded once for both."""
    llm = load_gguf_here(Path(path), vocab_only=True)  # the template and the vocabulary; decode loads the weights
    served = [served_prompt_here(llm, c) for c in conversations]
    stops = sorted(set(stop_ids) | eog_ids_here(llm))  # the runtime stops at these whatever the template says
    extra = [i for i, ids in enumerate(served) if i >= len(prompts) or ids != prompts[i]]
    out = decode.answers_here(
        path, prompts + [served[i] for i in extra], max_new_tokens, stops, refs + [None] * len(extra), adapter=adapter
    )
    own = dict(zip(extra, out[len(prompts) :], strict=True))
    chats = []
    for i, ids in enumerate(served):
        answer = own.get(i, out[i])["ids"]
        text = llm.detokenize(answer, prev_tokens=ids).decode("utf-8", errors="ignore")
        finish = "length" if len(answer) >= max_new_tokens else "stop"
        chats.append({"text": text, "finish_reason": finish, "completion_tokens": len(answer), "prompt_ids": ids})
    scored = [o for o, r in zip(out, refs, strict=False) if r]
    return {
        "answers": [o["ids"] for o in out[: len(prompts)]],
        "nll_sum": sum(o["nll_sum"] for o in scored),
        "tokens": sum(o["nll_tokens"] for o in scored),
        "served": chats,
        "reused": len(served) - len(extra),
    }


def gguf_chat_here(path: str, conversations: list[list[dict]], max_tokens: int) -> list[dict]:
    return gguf_task_here(path, [], [], conversations, max_tokens, [])["served"]


def gguf_tokenize_here(path: str, texts: list[str]) -> list[list[int]]:
    llm = load_gguf_here(Path(path), vocab_only=True)
    return [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]


def gguf_is_eog_here(path: str, token_ids: list[int]) -> list[bool]:
    import llama_cpp  # deferred: a native runtime, loaded only where it runs

    llm = load_gguf_here(Path(path), vocab_only=True)  # held: the vocabulary lives as long as the model
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return [bool(llama_cpp.llama_vocab_is_eog(vocab, t)) for t in token_ids]


@contextlib.contextmanager
def capture_llama_log(lines: list[str]):
    """Route llama.cpp's log into `lines` (the quantizer reports its per-tensor choices there)."""
    import llama_cpp  # deferred: a native runtime, loaded only where it runs
    from llama_cpp._logger import llama_log_callback as default

    @llama_cpp.llama_log_callback
    def capture(level, text, user_data):
        lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(default, ctypes.c_void_p(0))


def quantize_here(src: str, dst: str | None, quant: str, imatrix=None, dry_run: bool = False, recipe=None):
    import llama_cpp  # deferred: a native runtime, loaded only where it runs

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[quant].ftype
    params.nthread = cores()
    params.dry_run = dry_run
    keep = None
    if imatrix:
        arr, keep = imatrix_ctypes(imatrix)  # `keep` holds the buffers until the call returns
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    if recipe:
        table, patterns = overrides_ctypes(recipe)
        params.tt_overrides = ctypes.cast(table, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep = (keep, table, patterns)  # alive until the call returns
    lines: list[str] = []
    with capture_llama_log(lines):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst or os.devnull).encode(), params)
    del keep
    if rc != 0:
        raise EdgeqError(f"llama.cpp failed to quantize to {quant} (code {rc})", str(src))
    return lines if dry_run else None


def _onnx_greedy(og, model, ids: list[int], max_new_tokens: int, stop_ids) -> tuple[list[int], bool]:
    """One greedy continuation with onnxruntime-genai: (new tokens without the stop token, stopped by one)."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    out: list[int] = []
    while not gen.is_done():
        gen.generate_next_token()
        t = int(gen.get_next_tokens()[0])
        if t in stop_ids:
            return out, True
        out.append(t)
    return out, False


def onnx_generate_here(path: str, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int]) -> list:
    """Greedy continuation with onnxruntime-genai; the model's own eos also stops it."""
    import onnxruntime_genai as og  # deferred: a native runtime, loaded only where it runs

    model = og.Model(str(path))
    return [_onnx_greedy(og, model, ids, max_new_tokens, set(stop_ids))[0] for ids in prompts]


def onnx_task_here(path: str, prompts: list, refs: list, conversations: list, max_new_tokens: int, stop_ids) -> dict:
    """runtime.task_answers for an ONNX GenAI folder, one sequence at a time: each conversation as served (the
    GenAI tokenizer's own template, greedy until its eos), each prompt's greedy answer (taken from the served one
    where the prompt ids are the same), each reference's NLL from the decoder graph's logits."""
    import onnxruntime_genai as og  # deferred: a native runtime, loaded only where it runs

    model = og.Model(str(path))
    tok = og.Tokenizer(model)
    eos, chats, same = set(tok.eos_token_ids), [], {}
    for i, messages in enumerate(conversations):
        ids = [int(t) for t in tok.encode(tok.apply_chat_template(json.dumps(messages), add_generation_prompt=True))]
        answer, stopped = _onnx_greedy(og, model, ids, max_new_tokens, eos)
        finish = "stop" if stopped else "length"
        chats.append(
            {
                "text": tok.decode(answer),
                "finish_reason": finish,
                "completion_tokens": len(answer) + stopped,
                "prompt_ids": ids,
            }
        )
        if i < len(prompts) and ids == prompts[i]:
            same[i] = answer
    answers = [
        same[i] if i in same else _onnx_greedy(og, model, p, max_new_tokens, set(stop_ids))[0]
        for i, p in enumerate(prompts)
    ]
    scored = [(p + r, len(p)) for p, r in zip(prompts, refs, strict=True) if r]
    nll = (
        answer_nll_of(_onnx_logits_fn(path), [q for q, _ in scored], [s for _, s in scored])
        if scored
        else {"nll_sum": 0.0, "tokens": 0}
    )
    return {"answers": answers, **nll, "served": chats, "reused": len(same)}


def onnx_chat_here(path: str, conversations: list[list[dict]], max_tokens: int) -> list[dict]:
    return onnx_task_here(path, [], [], conversations, max_tokens, [])["served"]


def onnx_logits_here(path: str, texts: list[list[int]]) -> list[np.ndarray]:
    """(T, vocab) logits of the builder's decoder graph for each whole sequence (empty KV cache)."""
    logits_of = _onnx_logits_fn(path)
    return [logits_of(ids) for ids in texts]


def _onnx_logits_fn(path: str):
    """One ORT session on the folder's decoder graph; returns ids → (T, vocab) float32 logits."""

    import onnxruntime as ort  # deferred: a native runtime, loaded only where it runs

    path = Path(path)
    dec = json.loads((path / "genai_config.json").read_text())["model"]["decoder"]
    sess = ort.InferenceSession(str(path / dec["filename"]), providers=["CPUExecutionProvider"])

    def logits_of(ids: list[int]) -> np.ndarray:
        n = len(ids)
        feeds = {}
        for inp in sess.get_inputs():
            if inp.name == "input_ids":
                feeds[inp.name] = np.asarray([ids], dtype=np.int64)
            elif inp.name == "attention_mask":
                feeds[inp.name] = np.ones((1, n), dtype=np.int64)
            elif inp.name == "position_ids":
                feeds[inp.name] = np.arange(n, dtype=np.int64)[None]
            elif inp.name.startswith("past_key_values"):
                dtype = np.float16 if "float16" in inp.type else np.float32
                feeds[inp.name] = np.zeros((1, dec["num_key_value_heads"], 0, dec["head_size"]), dtype=dtype)
            else:
                raise UsageError(f"unexpected ONNX input {inp.name!r}", str(path))
        return np.asarray(sess.run(["logits"], feeds)[0][0], dtype=np.float32)

    return logits_of


def overrides(recipe: dict) -> list[tuple[str, str]]:
    """(anchored regex, type) pairs for llama.cpp: one per tensor, matched by its whole name only."""
    return [(f"^{re.escape(name)}$", t) for name, t in sorted(recipe.items())]


def overrides_ctypes(recipe: dict) -> tuple:
    """A null-terminated llama_model_tensor_override array for llama_model_quantize_params.tt_overrides (and the
    pattern buffers it points into, to keep alive until the call returns)."""
    import llama_cpp  # deferred: a native runtime, loaded only where it runs
    from gguf.constants import GGMLQuantizationType

    pairs = [(pattern.encode(), int(GGMLQuantizationType[t])) for pattern, t in overrides(recipe)]
    arr = (llama_cpp.llama_model_tensor_override * (len(pairs) + 1))()
    for i, (pattern, t) in enumerate(pairs):
        arr[i].pattern, arr[i].type = pattern, t
    arr[len(pairs)].pattern = None  # llama.cpp reads until a null pattern
    return arr, pairs


def imatrix_ctypes(matrix: dict) -> tuple:
    """A null-terminated llama_model_imatrix_data array (and the buffers it points into, to keep alive)."""
    import llama_cpp  # deferred: a native runtime, loaded only where it runs

    keep = [(name.encode(), np.ascontiguousarray(v, dtype=np.float32)) for name, v in matrix.items()]
    arr = (llama_cpp.llama_model_imatrix_data * (len(keep) + 1))()
    for i, (name, v) in enumerate(keep):
        arr[i].name = name
        arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = v.size
    arr[len(keep)].name = None  # llama.cpp reads until a null name
    return arr, keep

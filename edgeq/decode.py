"""Many greedy answers at once from one llama.cpp context, and the reference answers' likelihood in the same pass.

The eval answers hundreds of held-out prompts. One at a time, every new token reads every weight for one row of
activations; here up to SLOTS sequences share each decode step, and a new prompt takes the slot of one that
finished (continuous batching). The sequences share one KV cache (llama.cpp's unified cache), each under its own
sequence id at its own positions 0, 1, …: a sequence's logits are the ones it would get alone, up to the order of
float sums.

Teacher forcing rides along. While a greedy answer is still the reference token for token, the logits that chose
each token are the ones teacher forcing computes, so the reference's NLL is read off them; where the answer leaves
the reference (or ends before it), the rest of the reference is fed in one piece on a copy of the sequence's cache
up to that point. A model whose answers are mostly right gets its answer NLL almost for free.

Runs inside the child (runtime.py), never in the parent.
"""

from __future__ import annotations

import ctypes
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeq.errors import EdgeqError
from edgeq.machine import cores

# Sequences decoded together. Every token attends over the whole shared cache (masked), so more slots cost
# attention: 64 prompts of the drone task on the F16 default model took 279 s one at a time, 129 / 126 / 131 / 193 s
# with 8 / 16 / 32 / 64 slots (2-core AMD EPYC, CPU shared with a test run; benchmarks/RESULTS.md).
SLOTS = 16
MAX_CELLS = 1 << 16  # the shared KV cache's cap, in token cells; fewer slots where long sequences would pass it


@dataclass
class _Seq:
    index: int  # the prompt's position in the caller's list
    prompt: list[int]
    ref: list[int] | None  # the reference continuation to score, or None
    out: list[int] = field(default_factory=list)  # the greedy answer so far, stop token excluded
    nll: float = 0.0  # Σ −log p(ref[k]) over the reference tokens scored so far
    scored: int = 0
    on_ref: bool = True  # out == ref[: len(out)]: the next logits are teacher forcing's too
    ended: bool = False


class _Context:
    """One llama.cpp model and context (unified KV cache, n_seq sequence ids) and one token batch."""

    def __init__(
        self, path: str | Path, n_ctx: int, n_seq: int, n_batch: int, flash: bool = False, adapter: str | None = None
    ):
        import llama_cpp as lc  # deferred: a native runtime, loaded only where it runs

        self.lc = lc
        self.model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
        if not self.model:
            raise EdgeqError("llama.cpp could not load the model", path, "re-export it with edgeq export")
        self.adapter = lc.llama_adapter_lora_init(self.model, adapter.encode()) if adapter else None
        if adapter and not self.adapter:
            lc.llama_model_free(self.model)
            raise EdgeqError(
                "llama.cpp could not load the adapter", adapter, "re-export it: edgeq export --adapter RUN"
            )
        p = lc.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx, n_batch, min(n_batch, 512), n_seq
        p.n_threads = p.n_threads_batch = cores()
        p.kv_unified = True
        # off as llama-cpp-python's Llama serves it; on only where benchmarks/eval_slots.py measures what it would save
        p.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        p.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, p)
        if not self.ctx:
            if self.adapter:
                lc.llama_adapter_lora_free(self.adapter)
            lc.llama_model_free(self.model)
            raise EdgeqError("llama.cpp could not create a context", path, f"free memory: it asked for {n_ctx} cells")
        self.mem = lc.llama_get_memory(self.ctx)
        self.vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.batch = lc.llama_batch_init(n_batch, 0, 1)
        self.path = str(path)
        if self.adapter:  # every sequence of the pass under the one adapter, at scale 1 (as served)
            chosen, scale = (lc.llama_adapter_lora_p_ctypes * 1)(self.adapter), (ctypes.c_float * 1)(1.0)
            if lc.llama_set_adapters_lora(self.ctx, chosen, 1, scale):
                self.close()
                raise EdgeqError("llama.cpp could not apply the adapter", adapter, "re-export it for this base")

    def close(self) -> None:
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)
        if self.adapter:
            self.lc.llama_adapter_lora_free(self.adapter)
        self.lc.llama_model_free(self.model)

    def add(self, token: int, pos: int, seq: int, want_logits: bool) -> int:
        """Queue one token of sequence `seq` at position `pos`; returns its row for logits()."""
        b, i = self.batch, self.batch.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = token, pos, 1, seq, want_logits
        b.n_tokens = i + 1
        return i

    def decode(self) -> None:
        if self.batch.n_tokens:
            rc = self.lc.llama_decode(self.ctx, self.batch)
            if rc != 0:  # 1: no room in the KV cache; < 0: an error
                raise EdgeqError(f"llama.cpp could not decode a batch (code {rc})", self.path)
        self.batch.n_tokens = 0

    def logits(self, row: int) -> np.ndarray:
        """(vocab,) float64 logits of a queued token that asked for them, after decode()."""
        ptr = self.lc.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.vocab,)).astype(np.float64)

    def copy(self, src: int, dst: int, upto: int) -> None:
        """dst shares src's cache cells at positions [0, upto)."""
        self.lc.llama_memory_seq_cp(self.mem, src, dst, 0, upto)

    def drop(self, seq: int) -> None:
        self.lc.llama_memory_seq_rm(self.mem, seq, -1, -1)


def _nll(logits: np.ndarray, token: int) -> float:
    """−log softmax(logits)[token], in float64."""
    top = logits.max()
    return float(top + np.log(np.exp(logits - top).sum()) - logits[token])


def answers_here(
    path: str | Path,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop_ids: list[int],
    refs: list[list[int]] | None = None,
    slots: int = SLOTS,
    flash: bool = False,
    adapter: str | None = None,
) -> list[dict]:
    """Greedy continuation of each prompt (token ids), stopping before any of `stop_ids` or after max_new_tokens;
    where `refs` gives a reference continuation, its teacher-forced NLL too; with a GGUF LoRA `adapter` (checked
    against the model by the caller) applied. [{"ids", "nll_sum", "nll_tokens"}]"""
    if not prompts:
        return []
    refs = refs if refs is not None else [None] * len(prompts)
    longest_ref = max((len(r) for r in refs if r), default=0)
    per_seq = max(map(len, prompts)) + max_new_tokens + longest_ref  # its cells at most, teacher copy's included
    slots = max(1, min(slots, len(prompts), MAX_CELLS // per_seq))
    n_ctx = -(-(slots * per_seq + 256) // 256) * 256
    ctx = _Context(path, n_ctx, 2 * slots + 1, slots * (max(map(len, prompts)) + longest_ref + 1), flash, adapter)
    try:
        return _run(ctx, prompts, refs, max_new_tokens, set(stop_ids), slots)
    finally:
        ctx.close()


def shared_prefix(prompts: list[list[int]]) -> int:
    """How many leading tokens every prompt has in common, leaving each at least one of its own (whose logits
    choose its first answer token)."""
    first, n = prompts[0], min(map(len, prompts)) - 1
    return next((i for i in range(n) if any(p[i] != first[i] for p in prompts)), max(n, 0))


def _run(ctx: _Context, prompts, refs, max_new: int, stops: set, slots: int) -> list[dict]:
    """The decode loop. Slot s decodes its answer as sequence s; its teacher copy, if any, is sequence s + slots.
    The prompts' common head (a chat template's system turn) is computed once, as sequence 2·slots, and every
    prompt starts from a copy of it."""
    head, prefix = shared_prefix(prompts), 2 * slots
    for p, t in enumerate(prompts[0][:head]):
        ctx.add(t, p, prefix, False)
    ctx.decode()
    todo = deque(range(len(prompts)))
    free = list(range(slots - 1, -1, -1))
    live: dict[int, _Seq] = {}  # slot → the sequence it decodes
    feeds: list[tuple[_Seq, int, int]] = []  # (sequence, sequence id to feed it as, first reference index)
    done: list[dict | None] = [None] * len(prompts)
    while todo or live:
        reads = []  # (slot, row): greedy steps
        for s, q in live.items():
            if not q.ended:  # the token chosen last step goes in
                reads.append((s, ctx.add(q.out[-1], len(q.prompt) + len(q.out) - 1, s, True)))
        while todo and free:
            s, q = free.pop(), _Seq(todo[0], prompts[todo[0]], refs[todo.popleft()])
            live[s] = q
            ctx.copy(prefix, s, head)
            rows = [ctx.add(q.prompt[p], p, s, p == len(q.prompt) - 1) for p in range(head, len(q.prompt))]
            reads.append((s, rows[-1]))
        teach = [(q, seq, k, [ctx.add(q.ref[j], len(q.prompt) + j, seq, True) for j in range(k, len(q.ref) - 1)])
                 for q, seq, k in feeds]  # fmt: skip
        feeds = []
        ctx.decode()

        for q, seq, k, rows in teach:  # row j predicts ref[k + 1 + j]
            for j, row in enumerate(rows):
                q.nll += _nll(ctx.logits(row), q.ref[k + 1 + j])
            q.scored += len(rows)
            if seq >= slots:
                ctx.drop(seq)
        for s, row in reads:
            q = live[s]
            logits, k = ctx.logits(row), len(q.out)
            g = int(logits.argmax())
            q.ended = g in stops or k >= max_new
            if not q.ended:
                q.out.append(g)
                q.ended = len(q.out) >= max_new  # its logits would go unread
            if q.ref is None or not q.on_ref:
                continue
            if k >= len(q.ref):  # the answer ran past the reference: all of it scored
                q.on_ref = False
                continue
            q.nll += _nll(logits, q.ref[k])
            q.scored += 1
            if g != q.ref[k] or q.ended:  # the rest of the reference, teacher-forced on the cache of ref[:k]
                q.on_ref = False
                if k + 1 < len(q.ref):
                    seq = s if q.ended else s + slots
                    if seq != s:
                        ctx.copy(s, seq, len(q.prompt) + k)
                    feeds.append((q, seq, k))

        teaching = {id(q) for q, seq, _ in feeds if seq < slots}  # its own cache still to be fed next step
        for s in [s for s, q in live.items() if q.ended and id(q) not in teaching]:
            q = live.pop(s)
            if q.ref is not None and q.scored != len(q.ref):
                raise AssertionError(f"prompt {q.index}: {q.scored} of {len(q.ref)} reference tokens scored")
            done[q.index] = {"ids": q.out, "nll_sum": q.nll, "nll_tokens": q.scored}
            ctx.drop(s)
            free.append(s)
    ctx.drop(prefix)
    return done

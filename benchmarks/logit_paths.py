"""Four paths every export, build and eval takes, as they were (baseline) and as they are (edgeq), side by side in
one run on the default model, with the ratio and the check that both give the same answer:

- the export's special-token gate: bos/eos/pad and the chat template read back from the written F16 GGUF by
  gguf-py's GGUFReader (it parses every vocabulary string in Python) vs ggufcheck's header walk (what the gate
  reads now);
- compare(): the KLD, perplexities, top-1 and max |Δlogit| of (640, vocab) logits in numpy (the former code) vs
  evaluate.compare (torch, float64, in blocks of rows);
- the artifact's logits on two texts (the fidelity text's 640 tokens, the pricing text's first 1024): a child per
  text, widened to float64 (the former runtime.logits widened them in the child, so the baseline here is if
  anything quicker than it was) vs runtime.text_logits (one child, one model load, float32 out);
- one priced group of a mixed recipe (the token embedding at Q4_0, the rest F16) on the pricing probe's two texts
  of GAIN_TOKENS: runtime.quantize in one child, then text_logits in another (the former pricing) vs
  runtime.quantized_logits (both in one child).

    python benchmarks/logit_paths.py [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def best_of(reps: int, f) -> tuple[object, float]:
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return out, min(times)


def numpy_compare(ref: np.ndarray, art: np.ndarray, ids: list[int]) -> dict:
    """The former evaluate.compare, kept here as the baseline."""

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = log_softmax(ref), log_softmax(art)
    nxt = np.asarray(ids[1:])
    return {
        "mean_kld": float((np.exp(p) * (p - q)).sum(-1).mean()),
        "ppl_reference": float(np.exp(-p[np.arange(len(nxt)), nxt].mean())),
        "ppl_artifact": float(np.exp(-q[np.arange(len(nxt)), nxt].mean())),
        "top1_agreement": float((ref.argmax(-1) == art.argmax(-1)).mean()),
        "max_abs_logit": float(np.abs(ref - art).max()),
    }


def former_logits(path: Path, ids: list[int]) -> np.ndarray:
    """The former runtime.logits: one child per text, float64 out."""
    from edgeq.runtime import child_call

    return np.asarray(child_call("gguf_logits_here", "logits", path, path=path, texts=[ids])[0], np.float64)


def main() -> None:
    from edgeq.basemodel import ensure_default_model, load_tokenizer
    from edgeq.evaluate import TASK_TOKENS, TEXT_TOKENS, compare, fidelity_ids
    from edgeq.export.gguf import write_float_gguf
    from edgeq.machine import platform_info
    from edgeq.mixed import quantizable
    from edgeq.pricing import GAIN_TOKENS
    from edgeq.runtime import gguf_is_eog, pricing_text, quantize, quantized_logits, text_logits

    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    print(f"CPU: {platform_info()['cpu']}; default model (SmolLM2-135M-Instruct), best of {a.reps}")
    model = ensure_default_model()
    tok = load_tokenizer(model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / "model.F16.gguf"
        write_float_gguf(model, gguf, "F16")

        from gguf import GGUFReader, Keys

        from edgeq import ggufcheck

        keys = (Keys.Tokenizer.BOS_ID, Keys.Tokenizer.EOS_ID, Keys.Tokenizer.PAD_ID, Keys.Tokenizer.CHAT_TEMPLATE)

        def reader():
            fields = GGUFReader(gguf).fields
            return [fields[k].contents() if k in fields else None for k in keys]

        def walk():
            ggufcheck._CHECKED.clear()  # no header kept from an earlier call: each rep reads the file
            meta = ggufcheck.check_gguf(gguf)["metadata"]
            return [meta.get(k) for k in keys]

        theirs, t_base = best_of(a.reps, reader)
        ours, t_ours = best_of(a.reps, walk)
        assert theirs == ours, (theirs, ours)
        rows.append(("special tokens read back", t_base, t_ours, "same bos/eos/pad and template"))
        gguf_is_eog(gguf, [0])  # the child's imports warm in the page cache before either logits path is timed

        texts = [fidelity_ids(tok, TEXT_TOKENS), tok.encode(pricing_text(), add_special_tokens=False)[:TASK_TOKENS]]
        (old_a, old_b), t_base = best_of(a.reps, lambda: [former_logits(gguf, ids) for ids in texts])
        (new_a, new_b), t_ours = best_of(a.reps, lambda: text_logits(gguf, texts))
        same = np.array_equal(new_a, old_a.astype(np.float32)) and np.array_equal(new_b, old_b.astype(np.float32))
        rows.append(("logits of two texts", t_base, t_ours, "bit-identical" if same else "DIFFERENT"))

        recipe = {t.name: ("Q4_0" if t.name == "token_embd.weight" else "F16") for t in quantizable(gguf)}
        pair = [ids[:GAIN_TOKENS] for ids in texts]
        group = Path(tmp) / "gain.gguf"

        def two_children():
            quantize(gguf, group, "Q8_0", None, recipe)
            return text_logits(group, pair)

        old_g, t_base = best_of(a.reps, two_children)
        new_g, t_ours = best_of(a.reps, lambda: quantized_logits(gguf, group, "Q8_0", None, recipe, pair))
        same = all(np.array_equal(x, y) for x, y in zip(old_g, new_g, strict=True)) and not group.exists()
        rows.append(("a priced group", t_base, t_ours, "bit-identical" if same else "DIFFERENT"))

        ids = texts[0]
        rng = np.random.default_rng(0)
        art = (old_a + rng.normal(0, 0.05, old_a.shape)).astype(np.float32)  # an artifact a little off the float
        base, t_base = best_of(a.reps, lambda: numpy_compare(old_a, art, ids))
        new, t_ours = best_of(a.reps, lambda: compare(new_a, art, ids))
        worst = max(abs(getattr(new, k) - v) / abs(v) for k, v in base.items())
        rows.append(("compare (640 positions)", t_base, t_ours, f"largest relative difference {worst:.1e}"))

    print(f"{'path':<26}{'baseline s':>12}{'edgeq s':>10}{'ratio':>8}  check")
    for name, b, o, check in rows:
        print(f"{name:<26}{b:>12.3f}{o:>10.3f}{b / o:>7.1f}×  {check}")
    print(f"geometric mean speed-up {statistics.geometric_mean([b / o for _, b, o, _ in rows]):.1f}×")


if __name__ == "__main__":
    main()

"""The build's eval stage, piece by piece, as it was (baseline) and as it is (edgeq), side by side on one
finished build: the float model's answer NLL one conversation at a time vs batched, its greedy answers in
batches of 16 in file order vs batches of 64 sorted by length, and the artifact's answers generated again vs
reused from the served chat where the prompt tokens match.

    python benchmarks/eval_speed.py builds/drone [--test-data examples/drone/test.jsonl]

Prints seconds for each, the ratio, and checks that both ways give the same numbers.
"""

from __future__ import annotations

import argparse
import time
from importlib.resources import files
from pathlib import Path

from edgeq.spec import BUILD_EXAMPLE_TEST, BUILD_STATE_DIR


def timed(f):
    t = time.perf_counter()
    r = f()
    return r, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", type=Path, help="the --out of a finished edgeq build")
    ap.add_argument("--test-data", default=str(files("edgeq") / BUILD_EXAMPLE_TEST))
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeq.evaluate import (
        answer_budget,
        answer_positions,
        artifact_answers,
        hf_answer_nll,
        reference_logits,
        served_answers,
    )
    from edgeq.runtime import answer_nll_of
    from edgeq.task import generate_hf, load_task

    state = args.build / BUILD_STATE_DIR
    merged = state / "merge" / "model"
    artifact = next(p for p in (state / "export").iterdir() if p.name.startswith("model."))
    task = load_task(args.test_data)
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    seqs, starts = answer_positions(tok, task)
    budget = answer_budget(tok, task)
    rows = []

    one, t_one = timed(lambda: answer_nll_of(lambda ids: reference_logits(model, ids), seqs, starts))
    batched, t_batched = timed(lambda: hf_answer_nll(model, seqs, starts))
    same = abs(one["nll_sum"] - batched["nll_sum"]) <= 1e-6 * abs(one["nll_sum"])
    rows.append(("merged answer NLL: one by one vs batched", t_one, t_batched, f"equal to 1e-6: {same}"))

    old, t_old = timed(lambda: generate_hf(merged, task.prompts, budget, batch_size=16))
    new, t_new = timed(lambda: generate_hf(merged, task.prompts, budget))
    s_old, s_new = task.score(old)["score"], task.score(new)["score"]
    rows.append(("merged answers: batch 16 vs 64 sorted", t_old, t_new, f"score {s_old:.2f} vs {s_new:.2f}"))

    chats, t_served = timed(lambda: served_answers(artifact, task.prompts, budget))
    (again, _), t_again = timed(lambda: artifact_answers(artifact, tok, task.prompts, budget))
    (reused, n), t_reused = timed(lambda: artifact_answers(artifact, tok, task.prompts, budget, chats))
    rows.append(
        (
            "artifact answers: served + generated vs served + reused",
            t_served + t_again,
            t_served + t_reused,
            f"{n}/{len(reused)} reused, {sum(a == b for a, b in zip(again, reused, strict=True))} identical",
        )
    )

    print(f"{'':58} {'baseline s':>10} {'edgeq s':>8} {'ratio':>6}")
    for name, base, ours, note in rows:
        print(f"{name:58} {base:10.1f} {ours:8.1f} {base / ours:5.2f}x  {note}")


if __name__ == "__main__":
    main()

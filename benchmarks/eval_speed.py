"""The build's eval stage, piece by piece, as it was (baseline) and as it is (edgeq), side by side on one finished
build, with the numbers each way gives:

- the artifact (GGUF): its served answers one conversation at a time through llama-cpp-python's chat completion,
  then each reference teacher-forced alone (the as-evaluated answers were the served ones: same prompt ids), vs
  runtime.task_answers: every prompt in one batched pass with the NLL read off it (decode.py);
- the merged and the base model: transformers in fp32 (batched greedy generation, then batched teacher forcing)
  vs llama.cpp on their F16 GGUF through the same batched pass (the base's GGUF written first, and timed).

    python benchmarks/eval_speed.py builds/drone [--test-data examples/drone/test.jsonl] [--limit N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from importlib.resources import files
from pathlib import Path

from edgeq.spec import BUILD_EXAMPLE_TEST, BUILD_FLOAT_GGUF, BUILD_STATE_DIR, SHIPPED_EXAMPLES


def timed(f):
    t = time.perf_counter()
    r = f()
    return r, time.perf_counter() - t


def one_at_a_time(artifact: Path, convos: list, seqs: list, starts: list, budget: int) -> tuple[list[str], dict]:
    """The eval before the batched pass: one chat completion per conversation, one teacher-forced eval per
    reference, in llama-cpp-python's own API (configured as edgeq's children are)."""
    import numpy as np
    from llama_cpp import Llama

    from edgeq.runtime import answer_nll_of, configure_llama, llama_config

    configure_llama(llama_config())
    llm = Llama(str(artifact), n_ctx=2048, verbose=False)
    served = [
        llm.create_chat_completion(m, max_tokens=budget, temperature=0.0, top_k=1)["choices"][0]["message"]["content"]
        for m in convos
    ]
    teacher = Llama(str(artifact), n_ctx=2048, logits_all=True, verbose=False)

    def logits_of(ids):
        teacher.reset()
        teacher.eval(ids)
        return np.asarray(teacher.scores[: len(ids)], dtype=np.float64)

    return served, answer_nll_of(logits_of, seqs, starts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", type=Path, help="the --out of a finished edgeq build with a GGUF artifact")
    ap.add_argument("--test-data", default=str(files(SHIPPED_EXAMPLES) / BUILD_EXAMPLE_TEST))
    ap.add_argument("--limit", type=int, default=None, help="only the first N held-out examples")
    args = ap.parse_args()

    from edgeq.basemodel import load_tokenizer, resolve_model
    from edgeq.evaluate import answer_budget, answer_positions, artifact_task, float_task_score
    from edgeq.export.gguf import write_f16_gguf
    from edgeq.machine import platform_info
    from edgeq.serving import user_only
    from edgeq.task import load_task

    state = args.build / BUILD_STATE_DIR
    merged = state / "merge" / "model"
    artifact = next(p for p in (state / "export").iterdir() if p.suffix == ".gguf")
    base = resolve_model(None)  # the default model: the base of the default build
    task = load_task(args.test_data, args.limit)
    tok = load_tokenizer(merged)
    budget = answer_budget(tok, task)
    seqs, starts = answer_positions(tok, task)
    rows = []

    (served, nll), t_old = timed(
        lambda: one_at_a_time(artifact, [user_only(p) for p in task.prompts], seqs, starts, budget)
    )
    (score, as_served), t_new = timed(lambda: artifact_task(artifact, tok, task, budget, served=True))
    same = sum(a == b for a, b in zip(served, as_served.answers, strict=True))
    old_nll = nll["nll_sum"] / nll["tokens"]
    rows.append(
        (
            f"artifact {artifact.name}: served answers + answer NLL",
            t_old,
            t_new,
            f"served {task.score(served)['score']:.2f} vs {as_served.score:.2f}, {same}/{len(served)} answers "
            f"identical; NLL {old_nll:.5f} vs {score.answer_nll.mean_nll:.5f}",
        )
    )
    for name, model, gguf in (("merged", merged, state / "plan" / BUILD_FLOAT_GGUF), ("base", base, None)):
        hf, t_hf = timed(lambda m=model: float_task_score(m, task))
        with tempfile.TemporaryDirectory() as tmp:
            write = gguf is None
            if write:  # the base has no F16 GGUF in the build: the eval writes one, and that counts
                gguf = Path(tmp) / "base.F16.gguf"
                _, t_write = timed(lambda m=model, g=gguf: write_f16_gguf(m, g))
            else:
                t_write = 0.0
            ll, t_ll = timed(lambda m=model, g=gguf: float_task_score(m, task, g))
        same = sum(a == b for a, b in zip(hf.answers, ll.answers, strict=True))
        rows.append(
            (
                f"{name} model: transformers fp32 vs llama.cpp F16" + (" (GGUF written)" if write else ""),
                t_hf,
                t_write + t_ll,
                f"score {hf.score:.2f} vs {ll.score:.2f}, {same}/{len(hf.answers)} answers identical; "
                f"NLL {hf.answer_nll.mean_nll:.5f} vs {ll.answer_nll.mean_nll:.5f}",
            )
        )

    info = platform_info()
    cpu = f"{info['cpu']} ({', '.join(info['cpu_features'])})"
    print(f"{cpu}; {len(task.refs)} held-out examples, answers of at most {budget} new tokens")
    print(f"{'':62} {'baseline s':>10} {'edgeq s':>8} {'ratio':>6}")
    for name, old, new, note in rows:
        print(f"{name:62} {old:10.1f} {new:8.1f} {old / new:5.2f}x  {note}")
    total_old, total_new = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'all three':62} {total_old:10.1f} {total_new:8.1f} {total_old / total_new:5.2f}x")


if __name__ == "__main__":
    main()

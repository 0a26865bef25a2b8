"""What bounds the eval's batched pass (decode.py): the same prompts through llama.cpp with 1, 4, 8 and 16 sequences
decoded together, and with flash attention (which the eval does not use: the artifact is served without it), on the
F16 and the Q8_0 GGUF of one finished build.

    python benchmarks/eval_slots.py builds/drone [--limit 48] [--test-data examples/drone/test.jsonl]

Each row: seconds for the first --limit held-out prompts (greedy answers and the reference answers' NLL, as the eval
runs them), the prompt and answer tokens decoded (the prompts' shared head once; a reference's teacher-forced rest,
where an answer leaves it, not counted), those per second, and how many answers equal the first run's (16 slots).
"""

from __future__ import annotations

import argparse
import time
from importlib.resources import files
from pathlib import Path

from edgeq.spec import BUILD_EXAMPLE_TEST, BUILD_FLOAT_GGUF, BUILD_STATE_DIR, SHIPPED_EXAMPLES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", type=Path, help="the --out of a finished edgeq build with a GGUF artifact")
    ap.add_argument("--test-data", default=str(files(SHIPPED_EXAMPLES) / BUILD_EXAMPLE_TEST))
    ap.add_argument("--limit", type=int, default=48, help="the first N held-out examples")
    args = ap.parse_args()

    from edgeq import child, decode, templates
    from edgeq.basemodel import load_tokenizer
    from edgeq.evaluate import answer_budget, rendered
    from edgeq.machine import platform_info
    from edgeq.runtime import llama_setup
    from edgeq.task import load_task

    state = args.build / BUILD_STATE_DIR
    tok = load_tokenizer(state / "merge" / "model")
    task = load_task(args.test_data, args.limit)
    prompts, refs = rendered(tok, task)
    budget, stops = answer_budget(tok, task), templates.turn_ends(tok)
    q8 = next(p for p in (state / "export").iterdir() if p.suffix == ".gguf")
    models = {"F16": state / "plan" / BUILD_FLOAT_GGUF, q8.name: q8}
    info = platform_info()
    print(f"{info['cpu']} ({', '.join(info['cpu_features'])}); {len(prompts)} prompts, answers ≤ {budget} tokens")
    print(f"{'model':24} {'slots':>5} {'flash':>5} {'s':>7} {'tokens':>7} {'tok/s':>7}  answers as 16 slots")
    for name, path in models.items():
        runs = [(16, False), (1, False), (4, False), (8, False), (16, True)]
        first = None
        for slots, flash in runs:
            t = time.perf_counter()
            out = child.call(
                "edgeq.decode:answers_here", "answering", str(path), setup=llama_setup(), path=str(path),
                prompts=prompts, max_new_tokens=budget, stop_ids=stops, refs=refs, slots=slots, flash=flash,
            )  # fmt: skip
            seconds = time.perf_counter() - t
            head = decode.shared_prefix(prompts)
            tokens = head + sum(len(p) - head for p in prompts) + sum(len(o["ids"]) for o in out)
            answers = [o["ids"] for o in out]
            first = first or answers
            same = sum(a == b for a, b in zip(answers, first, strict=True))
            rate = tokens / seconds
            print(f"{name:24} {slots:5} {flash!s:>5} {seconds:7.1f} {tokens:7} {rate:7.1f}  {same}/{len(out)}")


if __name__ == "__main__":
    main()

"""What the build's score cache (OUT/.edgeq/scores/) saves a rebuild: the time `edgeq.evaluate.float_task_score`
takes for the merged fine-tune and for the base on the drone held-out set (HF batched greedy generation, then
teacher-forced answer NLL), against reading the kept score back.

    python benchmarks/float_scores.py --merged builds/drone/.edgeq/merge/model
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib.resources import files
from pathlib import Path


def main() -> None:
    from edgeq.basemodel import resolve_model
    from edgeq.evaluate import float_task_score
    from edgeq.machine import platform_info
    from edgeq.records import Score
    from edgeq.spec import BUILD_EXAMPLE_TEST, SHIPPED_EXAMPLES
    from edgeq.task import load_task

    ap = argparse.ArgumentParser()
    ap.add_argument("--merged", required=True, help="a merged drone fine-tune (a build's .edgeq/merge/model)")
    a = ap.parse_args()
    task = load_task(files(SHIPPED_EXAMPLES) / BUILD_EXAMPLE_TEST, None, None)
    print(f"CPU: {platform_info()['cpu']}; {len(task.prompts)} held-out prompts")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in (("merged", Path(a.merged)), ("base", resolve_model(None))):
            t = time.perf_counter()
            result = float_task_score(model, task)
            scored = time.perf_counter() - t
            kept = Path(tmp) / f"{name}.json"
            kept.write_text(json.dumps(result.as_dict()))
            t = time.perf_counter()
            Score.from_dict(json.loads(kept.read_text()))
            read = time.perf_counter() - t
            print(
                f"{name:6}: scored {scored:.1f} s (exact match {result.score:.1f} %), "
                f"kept score read in {1000 * read:.1f} ms"
            )


if __name__ == "__main__":
    main()

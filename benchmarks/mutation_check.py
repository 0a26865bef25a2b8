"""Break each gate on purpose, in a copy of the project, and check that some test turns red.

A gate that has never been seen failing is a claim, not a check. Each mutation below is one
deliberate defect (a resume that restarts from step 0, a merge verification that is skipped, a
tokenizer parity check that never fires, ...) paired with the tests that exist to catch it. The
script copies the working tree, applies one mutation at a time, and runs those tests against the
copy in a throw-away venv that sees the copy's `edgeq` first (children started with `python -I`
included) and the project's installed dependencies after it. Every mutation must be caught.

    python benchmarks/mutation_check.py              # all mutations (about 15 minutes on 2 cores)
    python benchmarks/mutation_check.py --only eos   # the mutations whose name contains "eos"

Exit 0 when every mutation was caught, 1 otherwise. The working tree itself is never modified.
"""

from __future__ import annotations

import argparse
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the project root
    old: str  # must occur exactly once in `file`
    new: str
    tests: tuple[str, ...]  # pytest node ids expected to fail with the mutation applied


MUTATIONS = (
    Mutation(
        "resume restarts from step 0",
        "edgeq/finetune.py",
        'return state["step"], state["losses"]',
        "return 0, []",
        ("tests/test_finetune.py::test_kill_and_resume_reproduces_the_loss_curve",),
    ),
    Mutation(
        "DDP without the gradient all-reduce",
        "edgeq/finetune.py",
        "_all_reduce_sum([p.grad for p in trainable if p.grad is not None] + [step_loss], world)",
        "_all_reduce_sum([step_loss], world)",
        ("tests/test_finetune.py::test_two_process_ddp_with_gloo",),
    ),
    Mutation(
        "merge verification skipped",
        "edgeq/merge.py",
        "    if not max_abs <= MERGE_TOLERANCE:",
        "    if False:",
        ("tests/test_merge.py::test_a_wrong_merge_is_refused_and_writes_nothing",),
    ),
    Mutation(
        "merge never applies the adapter",
        "edgeq/merge.py",
        "merged_model = peft_model.merge_and_unload().eval()",
        "merged_model = peft_model.unload().eval()",
        ("tests/test_merge.py::test_merged_weights_carry_the_adapter",),
    ),
    Mutation(
        "untrained adapter accepted",
        "edgeq/merge.py",
        "    if not effect > MERGE_TOLERANCE:",
        "    if False:",
        ("tests/test_merge.py::test_an_untrained_adapter_is_refused",),
    ),
    Mutation(
        "tokenizer parity gate never fires",
        "edgeq/export/gguf.py",
        '    if bad:\n        raise EdgeqError(\n            f"tokenizer parity failed',
        '    if False:\n        raise EdgeqError(\n            f"tokenizer parity failed',
        ("tests/export/test_gguf.py::test_a_damaged_tokenizer_fails_the_parity_gate",),
    ),
    Mutation(
        "Q/K rows left in HF's rotary layout",
        "edgeq/export/gguf.py",
        "    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)",
        "    return w",
        ("tests/export/test_gguf.py::test_an_unpermuted_q_k_fails_the_fidelity_gate",),
    ),
    Mutation(
        "fidelity gate never fires",
        "edgeq/export/gguf.py",
        "    if top1 < GATE_MIN_TOP1 or max_abs > limit:",
        "    if False:",
        ("tests/export/test_gguf.py::test_an_unpermuted_q_k_fails_the_fidelity_gate",),
    ),
    Mutation(
        "special-token gate ignores a lost eos",
        "edgeq/export/gguf.py",
        "    wrong = [k for k, v in carried.items() if v != info[k]]",
        "    wrong = []",
        ("tests/export/test_gguf.py::test_a_wrong_eos_id_in_the_file_fails_the_special_token_gate",),
    ),
    Mutation(
        "eval compares the reference with itself",
        "edgeq/evaluate.py",
        '"text": compare_logits(artifact, reference_logits(model, text_ids), text_ids),',
        '"text": compare(reference_logits(model, text_ids), reference_logits(model, text_ids), text_ids),',
        ("tests/test_evaluate.py::test_eval_tells_another_models_artifact_from_the_reference",),
    ),
    Mutation(
        "pickle loaded with code execution",
        "edgeq/basemodel.py",
        'state.update(torch.load(p, map_location="cpu", weights_only=True))',
        'state.update(torch.load(p, map_location="cpu", weights_only=False))',
        ("tests/hostile/test_model_dirs.py::test_opted_in_pickle_still_never_runs_code",),
    ),
    Mutation(
        "GGUF tensor past the end of the file accepted",
        "edgeq/ggufcheck.py",
        "        if offset % alignment or data_start + offset + nbytes > size:",
        "        if offset % alignment:",
        ("tests/hostile/test_gguf_headers.py::test_tensor_past_end_of_file",),
    ),
    Mutation(
        "bench baseline tolerance doubled",
        "edgeq/bench.py",
        'limit, kind = (-pct, MIN) if better == "higher" else (pct, MAX)',
        'limit, kind = (-2 * pct, MIN) if better == "higher" else (2 * pct, MAX)',
        ("tests/test_bench.py::test_baseline_threshold_is_the_tolerance_in_the_worse_direction",),
    ),
    Mutation(
        "bench decode budget never breached",
        "edgeq/bench.py",
        'results["decode_tok_s"]["median"], profile.min_decode_tok_s, MIN)',
        'results["decode_tok_s"]["median"], profile.min_decode_tok_s, MAX)',
        ("tests/test_bench.py::test_each_budget_breach_exits_3_and_fails_only_its_check",),
    ),
    Mutation(
        "doctor: a missing toolchain is fatal",
        "edgeq/doctor.py",
        "[_check(m, full) for m in TOOLCHAIN]",
        "[_check(m, True) for m in TOOLCHAIN]",
        ("tests/test_doctor.py::test_missing_optional_backend_is_not_fatal",),
    ),
    Mutation(
        "build exits 0 on a breached budget",
        "edgeq/build.py",
        "    if result.breaches:\n        raise BudgetError(",
        "    if False:\n        raise BudgetError(",
        ("tests/test_build.py::test_a_budget_breached_at_bench_exits_3_with_the_report_written",),
    ),
)


def copy_tree(dst: Path) -> None:
    """Tracked and untracked-but-not-ignored files, links kept as links (edgeq/profiles is one)."""
    names = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, names.split("\0")):
        src, out = ROOT / name, dst / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), out)
        else:
            shutil.copy2(src, out)


def make_venv(where: Path, tree: Path) -> Path:
    """A venv whose import path is the mutated tree first, then this interpreter's site-packages.

    The project's editable install is not on it (that .pth lives in a directory added as a plain
    path, so its finder never loads): `import edgeq` finds the copy, in `python -I` children too.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    (lib,) = (where / "lib").glob("python3*")
    paths = [str(tree), *site.getsitepackages()]
    (lib / "site-packages" / "edgeq-mutant.pth").write_text("\n".join(paths) + "\n")
    python = where / "bin" / "python"
    check = subprocess.run(
        [str(python), "-I", "-c", "import edgeq; print(edgeq.__file__)"], capture_output=True, text=True, check=True
    )
    if not check.stdout.strip().startswith(str(tree)):
        raise SystemExit(f"the throw-away venv imports edgeq from {check.stdout.strip()}, not from the copy")
    return python


def apply(tree: Path, m: Mutation) -> str:
    path = tree / m.file
    text = path.read_text()
    if text.count(m.old) != 1:
        raise SystemExit(f"mutation {m.name!r}: the code it breaks is not in {m.file} exactly once; update it")
    path.write_text(text.replace(m.old, m.new))
    return text


def failed_tests(output: str) -> list[str]:
    return [line.split(" ", 1)[1].split(" - ")[0] for line in output.splitlines() if line.startswith("FAILED ")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=[], help="run the mutations whose name contains one of these")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or any(s in m.name for s in args.only)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeq-mutants-") as scratch:
        tree = Path(scratch) / "tree"
        copy_tree(tree)
        python = make_venv(Path(scratch) / "venv", tree)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        for m in chosen:
            original = apply(tree, m)
            t0 = time.time()
            r = subprocess.run(
                [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *m.tests],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
            )
            (tree / m.file).write_text(original)
            caught = failed_tests(r.stdout)
            rows.append((m, caught, r.returncode, time.time() - t0))
            verdict = f"caught by {len(caught)} test(s)" if caught else f"NOT CAUGHT (pytest exit {r.returncode})"
            print(f"{m.name:<48} {verdict:<26} {time.time() - t0:6.0f} s", flush=True)
            for name in caught:
                print(f"    {name}")
    missed = [m.name for m, caught, _, _ in rows if not caught]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} mutations caught" + (f"; missed: {missed}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

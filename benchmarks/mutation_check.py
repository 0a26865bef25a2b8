"""Break each gate on purpose, in a copy of the project, and check that some test turns red.

A gate that has never been seen failing is a claim, not a check. Each mutation below is one
deliberate defect (a resume that restarts from step 0, a merge verification that is skipped, a
tokenizer parity check that never fires, ...) paired with the tests that exist to catch it. The
script copies the working tree, applies one mutation at a time, and runs those tests against the
copy in a throw-away venv that sees the copy's `edgeq` first (children started with `python -I`
included) and the project's installed dependencies after it. Every mutation must be caught.

    python benchmarks/mutation_check.py              # all mutations (about 20 minutes on 2 cores)
    python benchmarks/mutation_check.py --only eos   # the mutations whose name contains "eos"

The named tests first run once on the unmutated copy and must pass: a test red before any mutation would
count each one as caught. Exit 0 when every mutation was caught, 1 otherwise. The working tree itself is never
modified.
"""

from __future__ import annotations

import argparse
import os
import re
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


DECODE_NLL = "tests/test_decode.py::test_reference_nll_read_off_the_greedy_pass_is_teacher_forcing"
FT_HELD_OUT = "tests/test_finetune.py::test_plain_lora_held_out_loss_is_hfs_own_loss_on_the_seeded_tenth"
KLD_BY_HAND = "tests/test_evaluate.py::test_kld_is_the_references_distribution_against_the_artifacts_by_hand"
HOLDOUT = "tests/test_data.py::test_the_held_out_split_is_the_seeded_tenth_and_never_trained_on"
WORST_AND_NAN = "tests/test_bench.py::test_the_memory_gate_reads_the_worst_repetition_and_a_nan_measurement_fails"

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
        "    text, *task_text = compare_texts(artifact, [reference_logits(model, ids) for ids in texts], texts, "
        "adapter)",
        "    text, *task_text = [compare(reference_logits(model, i), reference_logits(model, i), i) for i in texts]",
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
        'results["decode_tok_s"].median, profile.min_decode_tok_s, MIN)',
        'results["decode_tok_s"].median, profile.min_decode_tok_s, MAX)',
        ("tests/test_bench.py::test_each_budget_breach_exits_3_and_fails_only_its_check",),
    ),
    Mutation(
        "doctor: a missing toolchain is fatal",
        "edgeq/doctor.py",
        "[_check(m, full) for m in TOOLCHAIN]",
        "[_check(m, True) for m in TOOLCHAIN]",
        ("tests/test_doctor.py::test_missing_optional_backend_is_not_fatal",),
    ),
    # What the fine-tune computes: which examples it trains and scores on, where the loss is taken, the adapter.
    Mutation(
        "fine-tune trains on its held-out examples",
        "edgeq/finetune.py",
        "        train_set=examples[n_eval:],",
        "        train_set=examples,",
        (FT_HELD_OUT,),
    ),
    Mutation(
        "held-out loss on other examples than the held-out ones",
        "edgeq/finetune.py",
        "        eval_set=examples[:n_eval],",
        "        eval_set=examples[len(examples) - n_eval :],",
        (FT_HELD_OUT,),
    ),
    Mutation(
        "LoRA scale alpha / r forced to 1",
        "edgeq/finetune.py",
        "        lora_alpha=cfg.lora_alpha,",
        "        lora_alpha=cfg.lora_r,",
        ("tests/test_finetune.py::test_qlora_run_writes_adapter_manifest_and_checkpoints",),
    ),
    Mutation(
        "loss taken at the label's own position",
        "edgeq/finetune.py",
        "    h = hidden[:, :-1][keep]  # (N, H)",
        "    h = hidden[:, 1:][keep]  # (N, H)",
        ("tests/test_finetune.py::test_the_loss_is_taken_where_a_label_follows_and_predicted_one_position_before",),
    ),
    Mutation(
        "loss on the prompt's tokens too",
        "edgeq/data.py",
        "    labels.extend(new if train else [IGNORE] * len(new))",
        "    labels.extend(new)",
        ("tests/test_data.py::test_both_formats_and_loss_only_on_assistant_tokens",),
    ),
    # What a score means.
    Mutation(
        "KLD the other way round",
        "edgeq/evaluate.py",
        "        kld += float((p.exp() * (p - q)).sum())",
        "        kld += float((q.exp() * (q - p)).sum())",
        (KLD_BY_HAND,),
    ),
    Mutation(
        "top-1 agreement of the reference with itself",
        "edgeq/evaluate.py",
        "        top1 += float((ref.argmax(-1) == art.argmax(-1)).sum())",
        "        top1 += float((ref.argmax(-1) == ref.argmax(-1)).sum())",
        (KLD_BY_HAND,),
    ),
    Mutation(
        "the artifact's perplexity read from the reference",
        "edgeq/evaluate.py",
        "        nll_art -= float(q[rows, nxt[lo : lo + len(rows)]].sum())",
        "        nll_art -= float(p[rows, nxt[lo : lo + len(rows)]].sum())",
        (KLD_BY_HAND,),
    ),
    Mutation(
        "chrF of the references against the answers",
        "edgeq/metrics.py",
        "CHRF().corpus_score(answers, [refs])",
        "CHRF().corpus_score(refs, [answers])",
        ("tests/test_metrics.py::test_chrf_is_the_answers_against_the_reference_by_hand",),
    ),
    Mutation(
        "JSON match on the text, not the parsed value",
        "edgeq/metrics.py",
        "exact = sum(g is not None and g == _reference(r) for g, r in zip(got, refs, strict=True))",
        "exact = sum(g is not None and json.dumps(g) == r for g, r in zip(got, refs, strict=True))",
        ("tests/test_metrics.py::test_json_exact_match_ignores_key_order_and_spacing_but_not_values",),
    ),
    Mutation(
        "exact match minds case",
        "edgeq/metrics.py",
        '    text = unicodedata.normalize("NFKC", text).casefold()',
        '    text = unicodedata.normalize("NFKC", text)',
        ("tests/test_metrics.py::test_exact_normalises_case_space_and_edge_punctuation",),
    ),
    Mutation(
        "answer NLL of the float model one position late",
        "edgeq/evaluate.py",
        "logp = torch.log_softmax(logits[j, start - 1 : len(seq) - 1].double(), -1)",
        "logp = torch.log_softmax(logits[j, start : len(seq)].double(), -1)",
        ("tests/test_evaluate.py::test_batched_answer_nll_equals_one_sequence_at_a_time",),
    ),
    Mutation(
        "answer NLL of the artifact one position late",
        "edgeq/runtime.py",
        "        x = np.asarray(logits_of(ids)[start - 1 : len(ids) - 1], np.float64)",
        "        x = np.asarray(logits_of(ids)[start : len(ids)], np.float64)",
        ("tests/test_runtime.py::test_answer_nll_sums_minus_log_softmax_of_each_answer_token_at_the_position_before",),
    ),
    Mutation(
        "batched answer NLL reads the next reference token",
        "edgeq/decode.py",
        "            q.nll += _nll(logits, q.ref[k])",
        "            q.nll += _nll(logits, q.ref[min(k + 1, len(q.ref) - 1)])",
        (DECODE_NLL,),
    ),
    Mutation(
        "a diverging reference teacher-forced on the answer's own cache",
        "edgeq/decode.py",
        "                    seq = s if q.ended else s + slots",
        "                    seq = s",
        (DECODE_NLL,),
    ),
    Mutation(
        "every prompt's shared head copied one token short",
        "edgeq/decode.py",
        "            ctx.copy(prefix, s, head)",
        "            ctx.copy(prefix, s, head - 1)",
        ("tests/test_decode.py::test_each_answer_is_its_prompts_own_greedy_decode_whatever_the_slots",),
    ),
    Mutation(
        "answers run past a turn end that is not eos",
        "edgeq/templates.py",
        "        ends.append(ids[0])",
        "        pass",
        ("tests/test_templates.py::test_llama3_base_ends_at_an_eot_flagged_special_only_among_its_added_tokens",),
    ),
    Mutation(
        "served score taken from the evaluation render",
        "edgeq/evaluate.py",
        'same_prompt_as_served=r["reused"]), scored(task, [c["text"] for c in r["served"]])',
        'same_prompt_as_served=r["reused"]), scored(task, answers)',
        ("tests/test_evaluate.py::test_the_served_score_is_the_ggufs_own_template_decoded_greedily_by_llama_cpp",),
    ),
    Mutation(
        "decode rate counts the first token",
        "edgeq/bench.py",
        '"decode_tok_s": (n_gen - 1) / raw["decode_s"] if n_gen > 1 else float("nan"),',
        '"decode_tok_s": n_gen / raw["decode_s"] if n_gen > 1 else float("nan"),',
        ("tests/test_bench.py::test_rates_come_from_the_timed_spans_with_the_first_token_counted_in_the_prompt",),
    ),
    # What the build decides.
    Mutation(
        "held-out split not seeded",
        "edgeq/data.py",
        "    random.Random(HOLDOUT_SEED).shuffle(order)",
        "    random.Random().shuffle(order)",
        (HOLDOUT,),
    ),
    Mutation(
        "held-out examples trained on too",
        "edgeq/data.py",
        '    write_text(train_path, "".join(text for h, text in pick if not h))',
        '    write_text(train_path, "".join(text for h, text in pick))',
        (HOLDOUT,),
    ),
    Mutation(
        "merge policies swapped",
        "edgeq/merge.py",
        '    if p.policy == "dequantized":\n        with torch.no_grad():',
        '    if p.policy == "pristine":\n        with torch.no_grad():',
        ("tests/test_merge.py::test_every_merged_weight_is_its_definition",),
    ),
    Mutation(
        "input memo blind to a same-size edit with its mtime put back",
        "edgeq/build.py",
        'k = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"',
        'k = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"',
        ("tests/test_build.py::test_a_same_size_edit_in_place_with_its_mtime_put_back_is_a_new_input",),
    ),
    # What a gate reads.
    Mutation(
        "a named calibration checked, the machine's used",
        "edgeq/calibration.py",
        "        cal = load_calibration(path)",
        "        cal = machine_calibration()[1]",
        ("tests/test_plan.py::test_a_named_calibration_is_the_one_the_numbers_come_from",),
    ),
    Mutation(
        "memory gate reads the median repetition",
        "edgeq/bench.py",
        'Check("memory", "MiB", max(results["memory_mib"].samples), profile.memory_budget_mib, MAX),',
        'Check("memory", "MiB", results["memory_mib"].median, profile.memory_budget_mib, MAX),',
        (WORST_AND_NAN,),
    ),
    Mutation(
        "a NaN passes a max check",
        "edgeq/checks.py",
        "return self.measured <= self.limit if self.kind == MAX else self.measured >= self.limit",
        "return not self.measured > self.limit if self.kind == MAX else self.measured >= self.limit",
        (WORST_AND_NAN,),
    ),
    Mutation(
        "ONNX config: only the decoder's files contained",
        "edgeq/onnxcheck.py",
        "    for where, key, value in _walk(cfg):",
        '    for where, key, value in _walk({"model": {"decoder": decoder}}):',
        ("tests/hostile/test_onnx_folders.py::test_a_file_named_outside_the_decoder_is_contained_too",),
    ),
    Mutation(
        "the probe's decision never reaches llama.cpp",
        "edgeq/runtime.py",
        '        p.use_extra_bufts = cfg["extra_buffer_types"]',
        "        p.use_extra_bufts = True",
        ("tests/test_probe.py::test_the_configuration_reaches_llama_cpp_as_its_own_log_reports",),
    ),
    Mutation(
        "Modelfile stops only at eos",
        "edgeq/buildreport.py",
        'stops = sorted({t for t in (tok.eos_token, *ends, "<|im_end|>" if chatml else None) if t})',
        'stops = sorted({t for t in (tok.eos_token, "<|im_end|>" if chatml else None) if t})',
        (
            "tests/test_buildreport.py::test_a_llama3_modelfile_stops_at_its_own_turn_end_and_eos_and_keeps_its_template",
        ),
    ),
    Mutation(
        "build exits 0 on a breached budget",
        "edgeq/build.py",
        "    if result.breaches:\n        raise BudgetError(",
        "    if False:\n        raise BudgetError(",
        ("tests/test_build.py::test_a_budget_breached_at_bench_exits_3_with_the_report_written",),
    ),
    Mutation(
        "a Q8_0 build's manifest claims an importance matrix",
        "edgeq/build.py",
        "imatrix_source=str(job.data) if imatrix else None)",
        "imatrix_source=str(job.data))",
        ("tests/test_build.py::test_outputs",),
    ),
    Mutation(
        "the table says Q6_K rounds without the matrix",
        "edgeq/spec.py",
        '"MOSTLY_Q6_K", uses_imatrix=True)',
        '"MOSTLY_Q6_K")',
        (
            "tests/export/test_gguf.py::"
            "test_the_types_said_to_weigh_by_an_importance_matrix_are_those_llama_cpp_rounds_differently_with_one",
        ),
    ),
    Mutation(
        "LoRA's frozen base trains too",
        "edgeq/finetune.py",
        "        p.requires_grad_(not cfg.adapters)",
        "        p.requires_grad_(True)",
        ("tests/test_finetune.py::test_adapter_methods_leave_the_base_bit_identical_and_qlora_keeps_it_in_nf4",),
    ),
    Mutation(
        "compare-methods picks the rate with the highest eval loss",
        "edgeq/compare.py",
        '    lr = min(trials, key=lambda t: t["eval_loss"])["lr"]',
        '    lr = max(trials, key=lambda t: t["eval_loss"])["lr"]',
        ("tests/test_compare.py::test_each_method_trains_at_the_best_of_its_three_rates_on_the_training_split",),
    ),
    Mutation(
        "forgetting measured the other way round (KL of the fine-tune against the base)",
        "edgeq/compare.py",
        'kld = compare(base["logits"], reference_logits(model, base["ids"]), base["ids"]).mean_kld',
        'kld = compare(reference_logits(model, base["ids"]), base["logits"], base["ids"]).mean_kld',
        ("tests/test_compare.py::test_forgetting_is_the_kld_and_the_choice_accuracy_an_independent_count_gives",),
    ),
    Mutation(
        "eval --adapter loads the adapter but never applies it",
        "edgeq/decode.py",
        "        if self.adapter:  # every sequence of the pass under the one adapter, at scale 1 (as served)",
        "        if False:  # every sequence of the pass under the one adapter, at scale 1 (as served)",
        ("tests/export/test_adapter.py::test_eval_scores_base_plus_adapter_as_its_merged_model_is_scored",),
    ),
    Mutation(
        "a full fine-tune on CUDA keeps no gradients",
        "edgeq/trainplan.py",
        '        "trained + gradients": 8 * sum(trained),',
        '        "trained + gradients": 4 * sum(trained),',
        ("tests/test_trainplan.py::test_the_gpu_prediction_is_its_terms_and_the_cuda_context",),
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


def map_packages(tree: Path) -> None:
    """The packages pyproject maps from other folders (edgeq.shipped_profiles = profiles/), linked where the
    copy's `import edgeq` looks for them, as the editable install resolves them. The table read line by line:
    tomllib is Python 3.11's, and the project runs on 3.10."""
    table = (tree / "pyproject.toml").read_text().split("[tool.setuptools.package-dir]", 1)[1].split("\n[", 1)[0]
    mapped = re.findall(r'^"([\w.]+)"\s*=\s*"([^"]+)"', table, re.MULTILINE)
    assert mapped, "pyproject.toml maps no package: update map_packages"
    for package, folder in mapped:
        link = tree.joinpath(*package.split("."))
        if not link.exists():
            link.symlink_to(tree / folder, target_is_directory=True)


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
    """The tests that failed. An error in a fixture is not a catch: the copy's environment can break one for every
    mutation alike (it did: a package the copy could not import), and a check that cannot miss checks nothing."""
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
        map_packages(tree)
        python = make_venv(Path(scratch) / "venv", tree)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        tests = sorted({t for m in chosen for t in m.tests})
        t0 = time.time()
        r = subprocess.run(
            [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:  # a test red before any mutation would count every mutation as caught
            print(r.stdout[-3000:])
            raise SystemExit(f"the unmutated copy fails its own tests (pytest exit {r.returncode}): nothing to check")
        print(f"{'(no mutation: every named test passes)':<48} {len(tests)} tests {time.time() - t0:17.0f} s")
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

"""`edgeq compare-methods`: the seed's table on the user's own data — full fine-tune, LoRA and QLoRA from one seed and
one split, each at its own best learning rate, scored and served alike, with what each forgets.

The recipe, top to bottom:
  1. one split for every run: --test-data, or a seeded share of --data held out once (data.split_holdout)
  2. per method and seed, the learning rate: three values (a third of the method's default, the default, three
     times it), each a fresh `edgeq finetune` process over a fraction of the steps, judged by the training
     split's own eval loss — never by the test set
  3. the build at that rate, a fresh `edgeq build --method M --lr LR --seed S` process: the float model's task
     score and answer NLL, the served artifact's score at the profile's choice, and the fine-tune's peak RSS, time
     and trainable parameters. The base's score is the same for every run: scored once, kept for the others
  4. forgetting: mean KLD of the fine-tuned float model against the base on a general text in neither the example
     data nor the fidelity text, and a small general multiple-choice task (edgeq/assets/general_choices.json)
     scored on both
  5. the table (JSON, Markdown, a plot), with the ratios the seed quotes
Every run leaves its result in OUT; a second call resumes where the first stopped.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from edgeq import report
from edgeq.basemodel import MODEL_HELP, load_tokenizer, resolve_model
from edgeq.config import problems, setting
from edgeq.data import load_dataset, split_holdout
from edgeq.errors import ConfigError, EdgeqError, UsageError
from edgeq.evaluate import compare, hf_answer_nll, reference_logits
from edgeq.finetune import FinetuneConfig, optimizer_steps
from edgeq.io import OUTPUT_MARK, atomic_file, check_not_input, edgeq_wrote, write_json, write_text
from edgeq.machine import platform_info
from edgeq.profiles import PROFILE_HELP, load_profile
from edgeq.runtime import ASSETS
from edgeq.spec import (
    BUILD_EXAMPLE_DATA,
    BUILD_EXAMPLE_TEST,
    BUILD_SCORES_DIR,
    BUILD_STATE_DIR,
    EXIT_BUDGET,
    FINETUNE_LR,
    FINETUNE_MANIFEST,
    FINETUNE_METHODS,
    SHIPPED_EXAMPLES,
)
from edgeq.task import load_task

LR_FACTORS = (1 / 3, 1.0, 3.0)  # the learning-rate trials, as multiples of the method's default
GENERAL_TEXT, GENERAL_CHOICES = "general_text.txt", "general_choices.json"
METHOD_NAMES = {"full": "full fine-tune", "lora": "LoRA (16-bit base)", "qlora": "QLoRA (NF4 base)"}


@dataclass
class CompareConfig:
    data: str | None = setting(None, "training JSONL [default: the example drone data]")
    test_data: str | None = setting(
        None, "held-out task JSONL [default: the example's with the example data, else a seeded 10 % of --data]"
    )
    profile: str = setting("drone", PROFILE_HELP)
    base: str | None = setting(None, MODEL_HELP)
    out: str = setting("builds/compare-methods", "output folder: every run, the table and the plot (resumes)")
    methods: tuple[str, ...] = setting(
        tuple(reversed(FINETUNE_METHODS)),
        f"comma-separated methods to compare [default: {','.join(reversed(FINETUNE_METHODS))}]",
        listed=True,
    )
    seeds: int = setting(1, "seeds per method (0, 1, …): the table shows their mean and range", minimum=1, maximum=20)
    max_steps: int | None = setting(None, "cap every fine-tune's optimizer steps", minimum=1, maximum=1 << 30)
    trial_share: float = setting(
        0.25, "share of the steps each learning-rate trial trains", minimum=0.01, maximum=1.0, flag="--trial-share"
    )

    def check(self) -> None:
        p = problems(self)
        p += [f"--methods {m!r}: expected some of {', '.join(FINETUNE_METHODS)}" for m in self.methods if m not in
              FINETUNE_METHODS]  # fmt: skip
        if not self.methods or len(set(self.methods)) != len(self.methods):
            p.append("--methods: name each method once")
        if p:
            raise ConfigError(p, "compare-methods options")


# ---------------------------------------------------------------------------------------------
# the split and the runs, each a fresh process (its peak RSS is its own)


def inputs(cfg: CompareConfig) -> tuple[Path, Path | None, Path]:
    """(training data, held-out data or None for a split of it, base), each refused here with one line if
    malformed, before anything is written: the runs would only find it later, in a child process."""
    package = Path(str(files(SHIPPED_EXAMPLES)))
    data = Path(cfg.data) if cfg.data else package / BUILD_EXAMPLE_DATA
    test = Path(cfg.test_data) if cfg.test_data else (package / BUILD_EXAMPLE_TEST if not cfg.data else None)
    profile = load_profile(cfg.profile)
    base = resolve_model(cfg.base)
    load_dataset(data, load_tokenizer(base), FinetuneConfig(data="", out="").seq_len)
    if test is not None:
        load_task(test)
    check_not_input(cfg.out, [cfg.base, data, test, profile.source if Path(profile.source).is_file() else None])
    out = Path(cfg.out)
    if out.exists() and not edgeq_wrote(out) and (not out.is_dir() or any(out.iterdir())):
        raise UsageError("not a compare-methods folder: it writes only into its own", str(out), "choose a new --out")
    return data, test, base


def split(data: Path, test: Path | None, out: Path) -> tuple[Path, Path]:
    """(training, held-out) files every run shares; a held-out share of --data is cut once and kept in OUT."""
    if test is not None:
        return data, test
    if not (out / "split" / "test.jsonl").is_file():
        (out / "split").mkdir(parents=True, exist_ok=True)
        split_holdout(data, out / "split")
    return out / "split" / "train.jsonl", out / "split" / "test.jsonl"


def trial_steps(cfg: CompareConfig, train: Path, base_dir: Path) -> int:
    """Optimizer steps of each learning-rate trial: its share of what one fine-tune at the defaults takes."""
    ft = FinetuneConfig(data=str(train), out="", max_steps=cfg.max_steps)
    examples = len(load_dataset(train, load_tokenizer(base_dir), ft.seq_len).examples)
    return max(1, math.ceil(cfg.trial_share * optimizer_steps(ft, examples)))


def edgeq(*args) -> subprocess.CompletedProcess:
    """`edgeq ARGS` in a fresh Python process, its output left to the terminal's progress bars."""
    return subprocess.run([sys.executable, "-m", "edgeq", *map(str, args)], stdout=subprocess.DEVNULL, check=False)


def trial(cfg: CompareConfig, out: Path, train: Path, method: str, seed: int, lr: float, steps: int) -> dict:
    """One learning-rate trial: its eval loss on the training split's held-out share, kept in OUT/trials."""
    name = f"{method}-s{seed}-lr{lr:.3g}"
    kept = out / "trials" / f"{name}.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    work = out / "trials" / name
    base = ["--base", cfg.base] if cfg.base else []
    args = ["finetune", "--data", train, "--out", work, "--method", method, "--lr", lr, "--seed", seed]
    r = edgeq(*args, "--max-steps", steps, "--force", *base)
    if r.returncode != 0:
        raise EdgeqError(f"the learning-rate trial {name} failed (exit {r.returncode})", str(work), "see its output")
    manifest = json.loads(next(work.glob(f"*/{FINETUNE_MANIFEST}")).read_text())
    got = {"lr": lr, "steps": steps, "eval_loss": manifest["summary"]["eval_loss"]}
    write_json(kept, got)
    shutil.rmtree(work)  # a full fine-tune's trial is a whole model: only its loss is kept
    return got


def run_build(cfg: CompareConfig, out: Path, train: Path, test: Path, method: str, seed: int, lr: float) -> Path:
    """The build at the chosen rate into OUT/runs/METHOD-sSEED (a breached budget is a result too); the base's
    task score, the same for every run, is copied from a finished one so that it is scored once."""
    where = out / "runs" / f"{method}-s{seed}"
    if (where / "manifest.json").is_file():
        return where
    scores = where / BUILD_STATE_DIR / BUILD_SCORES_DIR
    for kept in sorted((out / "runs").glob(f"*/{BUILD_STATE_DIR}/{BUILD_SCORES_DIR}/base-*.json")):
        scores.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kept, scores / kept.name)
    args = ["build", "--profile", cfg.profile, "--data", train, "--test-data", test, "--out", where, "--reps", 1]
    args += ["--method", method, "--lr", lr, "--seed", seed]
    args += (["--base", cfg.base] if cfg.base else []) + (["--max-steps", cfg.max_steps] if cfg.max_steps else [])
    r = edgeq(*args)
    if r.returncode not in (0, EXIT_BUDGET) or not (where / "manifest.json").is_file():
        raise EdgeqError(f"the build of {method}, seed {seed} failed (exit {r.returncode})", str(where), "see above")
    return where


# ---------------------------------------------------------------------------------------------
# forgetting: the fine-tuned float model against the base


def general_items() -> tuple[list[str], list[list[str]], list[int]]:
    """The general multiple-choice questions, their choices and the right one's index."""
    doc = json.loads((ASSETS / GENERAL_CHOICES).read_text(encoding="utf-8"))
    return [it["question"] for it in doc["items"]], [it["choices"] for it in doc["items"]], [it["answer"] for it in
            doc["items"]]  # fmt: skip


def choice_accuracy(model, tok) -> float:
    """% of the general questions where the right choice is the model's most likely continuation of
    "Question: Q\nAnswer:" (lowest mean NLL per token of " CHOICE"): plain text, as language-model benchmarks score
    multiple choice, so the figure is what the model knows, not whether its chat turn is one word long (a base that
    answers in sentences scores near chance on one-word chat answers, and a terse fine-tune above it). Every choice
    of every question in one batched pass."""
    questions, choices, right = general_items()
    seqs, starts = [], []
    for q, options in zip(questions, choices, strict=True):
        head = tok.encode(f"Question: {q}\nAnswer:", add_special_tokens=False)
        for c in options:
            seqs.append(head + tok.encode(f" {c}", add_special_tokens=False))
            starts.append(len(head))
    each = hf_answer_nll(model, seqs, starts)["each"]
    k = len(choices[0])
    mean = [nll / n for nll, n in each]  # [question i × choices + choice k]
    picked = [min(range(k), key=lambda j, i=i: mean[i * k + j]) for i in range(len(right))]
    return 100.0 * sum(p == r for p, r in zip(picked, right, strict=True)) / len(right)


def general_ids(tok, positions: int) -> list[int]:
    return tok.encode((ASSETS / GENERAL_TEXT).read_text(encoding="utf-8"), add_special_tokens=False)[:positions]


def load_float(model_dir: Path):
    import torch  # deferred: the workstation toolchain, absent from the runtime-only install
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def base_reference(base_dir: Path, out: Path) -> dict:
    """The base's logits on the general text (kept as .npy) and its general accuracy, computed once."""
    import numpy as np

    kept = out / "base_general.json"
    if kept.is_file():
        return json.loads(kept.read_text()) | {"logits": np.load(out / "base_general.npy")}
    model, tok = load_float(base_dir), load_tokenizer(base_dir)
    ids = general_ids(tok, model.config.max_position_embeddings)
    logits = reference_logits(model, ids)
    with atomic_file(out / "base_general.npy") as f:
        np.save(f, logits)
    got = {"ids": ids, "general_accuracy": choice_accuracy(model, tok)}
    write_json(kept, got)
    return got | {"logits": logits}


def forgetting(tuned_dir: Path, base: dict) -> dict:
    model, tok = load_float(tuned_dir), load_tokenizer(tuned_dir)
    kld = compare(base["logits"], reference_logits(model, base["ids"]), base["ids"]).mean_kld
    return {"general_kld": kld, "general_accuracy": choice_accuracy(model, tok), "general_tokens": len(base["ids"])}


# ---------------------------------------------------------------------------------------------
# one run's row, then the table


def row(where: Path, method: str, seed: int, trials: list[dict], lr: float, base: dict) -> dict:
    """What the table shows of one run, read from its build's manifest, with its forgetting."""
    m = json.loads((where / "manifest.json").read_text())
    ft, task, quant = m["finetune"], m["task"], m["quant_recipe"]
    return {
        "method": method,
        "seed": seed,
        "lr": lr,
        "trials": trials,
        "steps": ft["steps"],
        "task_base": task["base"],
        "task_float": task["merged"],
        "task_served": m["fidelity"]["task_served"]["score"],
        "metric": task["metric"],
        "answer_nll_float": task["answer_nll"]["merged"]["mean_nll"],
        "served_as": quant["quant"] + ("-mixed" if quant.get("recipe") else "") + f" ({quant['format']})",
        "finetune_peak_rss_mib": ft["peak_rss_mib"],
        "finetune_seconds": ft["seconds"],
        "seconds_per_step": ft["seconds_per_step"],
        "trainable_params": ft["trainable_params"],
        "total_params": ft["total_params"],
        **forgetting(where / BUILD_STATE_DIR / "merge" / "model", base),
        "general_accuracy_base": base["general_accuracy"],
    }


def run_one(
    cfg: CompareConfig, out: Path, train: Path, test: Path, method: str, seed: int, base: dict, steps: int
) -> dict:
    kept = out / "results" / f"{method}-s{seed}.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    trials = [trial(cfg, out, train, method, seed, FINETUNE_LR[method] * f, steps) for f in LR_FACTORS]
    lr = min(trials, key=lambda t: t["eval_loss"])["lr"]
    report.err.print(f"{method}, seed {seed}: learning rate {lr:.3g} (eval loss " + ", ".join(
        f"{t['lr']:.3g} → {t['eval_loss']:.4f}" for t in trials) + ")")  # fmt: skip
    got = row(run_build(cfg, out, train, test, method, seed, lr), method, seed, trials, lr, base)
    write_json(kept, got)
    return got


def summarize(rows: list[dict]) -> dict:
    """Per method: each figure's mean over seeds and its range; the ratios the seed quotes, of the means."""
    keys = ("task_float", "task_served", "answer_nll_float", "finetune_peak_rss_mib", "finetune_seconds",
            "general_kld", "general_accuracy")  # fmt: skip
    methods = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        methods[method] = {"seeds": len(mine), "trainable_params": mine[0]["trainable_params"]}
        for k in keys:
            values = [r[k] for r in mine]
            methods[method][k] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}

    def ratio(a: str, b: str, key: str) -> float | None:
        if a not in methods or b not in methods or not methods[b][key]["mean"]:
            return None
        return methods[a][key]["mean"] / methods[b][key]["mean"]

    ratios = {
        "lora_over_full_task_float": ratio("lora", "full", "task_float"),
        "qlora_over_full_task_float": ratio("qlora", "full", "task_float"),
        "lora_over_full_task_served": ratio("lora", "full", "task_served"),
        "qlora_over_full_task_served": ratio("qlora", "full", "task_served"),
        "qlora_over_lora_memory": ratio("qlora", "lora", "finetune_peak_rss_mib"),
    }
    return {"methods": methods, "ratios": ratios}


def _cell(s: dict, fmt: str) -> str:
    mean = format(s["mean"], fmt)
    return mean if s["min"] == s["max"] else f"{mean} ({format(s['min'], fmt)}–{format(s['max'], fmt)})"


def markdown(summary: dict, rows: list[dict], info: dict) -> str:
    metric, base = rows[0]["metric"], rows[0]["task_base"]
    lines = [
        f"# Fine-tuning methods compared — {info['data']}",
        "",
        f"Base {info['base']}; held-out task {info['test_data']} ({metric}; the base scores {base:.1f}); "
        f"profile {info['profile']}; {info['cpu']}; {info['date']}. Each cell: the mean over seeds and, where they "
        "differ, their range.",
        "",
        f"| method | seeds | learning rate | trainable params | task {metric}, float | task, served | answer NLL "
        "| fine-tune peak RSS MiB | fine-tune s | general KLD vs base | general MC % (base "
        f"{rows[0]['general_accuracy_base']:.1f}) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, s in summary["methods"].items():
        lrs = sorted({r["lr"] for r in rows if r["method"] == method})
        lines.append(
            f"| {METHOD_NAMES[method]} | {s['seeds']} | {', '.join(f'{x:.3g}' for x in lrs)} | "
            f"{s['trainable_params']:,} | {_cell(s['task_float'], '.1f')} | {_cell(s['task_served'], '.1f')} | "
            f"{_cell(s['answer_nll_float'], '.3f')} | {_cell(s['finetune_peak_rss_mib'], '.0f')} | "
            f"{_cell(s['finetune_seconds'], '.0f')} | {_cell(s['general_kld'], '.4f')} | "
            f"{_cell(s['general_accuracy'], '.1f')} |"
        )
    r = summary["ratios"]
    shown = {k: "—" if v is None else f"{v:.2f}" for k, v in r.items()}
    lines += [
        "",
        "The seed's claim: LoRA keeps 95–100 % of a full fine-tune's accuracy and QLoRA 90–95 %, at a fraction of the "
        "memory. Measured here (float model / served artifact): LoRA / full "
        f"{shown['lora_over_full_task_float']} / {shown['lora_over_full_task_served']}, QLoRA / full "
        f"{shown['qlora_over_full_task_float']} / {shown['qlora_over_full_task_served']}; QLoRA / LoRA fine-tune "
        f"memory {shown['qlora_over_lora_memory']}.",
        "",
        "Same for every method: the training split, the held-out task, the steps and the examples each step sees, "
        "the schedule's shape (linear warm-up, cosine decay), the evaluation. What differs: what trains (every "
        "weight, or rank-16 adapters on every linear layer), the frozen base's storage (fp32, 16-bit, NF4), and the "
        "learning rate, each method's own best of three on the training split's eval loss.",
        "",
    ]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    """Served task score against the fine-tune's peak memory, a point per method (the seeds' range as bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, s in summary["methods"].items():
        x, y = s["finetune_peak_rss_mib"], s["task_served"]
        ax.errorbar(x["mean"], y["mean"], yerr=[[y["mean"] - y["min"]], [y["max"] - y["mean"]]],
                    xerr=[[x["mean"] - x["min"]], [x["max"] - x["mean"]]], fmt="o", capsize=4,
                    label=METHOD_NAMES[method])  # fmt: skip
    ax.set_xlabel("fine-tune peak RSS (MiB)")
    ax.set_ylabel("task score of the served artifact")
    ax.set_title("What each method costs and keeps")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def view(result: dict):
    """The table at a glance (the CLI prints it); methods.md has it whole."""
    rows = [
        [METHOD_NAMES[m], s["seeds"], f"{s['trainable_params']:,}", _cell(s["task_float"], ".1f"),
         _cell(s["task_served"], ".1f"), _cell(s["finetune_peak_rss_mib"], ".0f"), _cell(s["general_kld"], ".4f"),
         _cell(s["general_accuracy"], ".1f")]
        for m, s in result["methods"].items()
    ]  # fmt: skip
    head = ["method", "seeds", "trained params", "task, float", "task, served", "peak RSS MiB", "general KLD",
            "general MC %"]  # fmt: skip
    r = {k: "—" if v is None else f"{v:.2f}" for k, v in result["ratios"].items()}
    caption = (f"LoRA / full {r['lora_over_full_task_float']}, QLoRA / full {r['qlora_over_full_task_float']} "
               f"(float task score); QLoRA / LoRA memory {r['qlora_over_lora_memory']}")  # fmt: skip
    return report.table("fine-tuning methods compared", head, rows, caption=caption)


def compare_methods(cfg: CompareConfig) -> dict:
    """split → per method and seed: the rate's trials, the build, forgetting → the table, JSON and plot."""
    cfg.check()
    data, test, base_dir = inputs(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / OUTPUT_MARK, "written by edgeq compare-methods\n")
    t0 = time.time()
    train, test = split(data, test, out)
    base, steps = base_reference(base_dir, out), trial_steps(cfg, train, base_dir)
    rows = [run_one(cfg, out, train, test, m, s, base, steps) for s in range(cfg.seeds) for m in cfg.methods]
    summary = summarize(rows)
    info = {"data": str(cfg.data or "the example drone data"), "test_data": str(test), "base": str(base_dir),
            "profile": cfg.profile, "cpu": platform_info()["cpu"], "date": time.strftime("%Y-%m-%d"),
            "seconds_this_call": round(time.time() - t0, 1)}  # fmt: skip
    result = {"info": info, **summary, "runs": rows}
    write_json(out / "methods.json", result)
    write_text(out / "methods.md", markdown(summary, rows, info))
    plot(summary, out / "methods.png")
    return result

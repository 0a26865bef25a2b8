"""`edgeq bench`: footprint and speed of a GGUF or ONNX artifact, where it will run, gated by a profile.

Runtime-only (no torch, no transformers). Each repetition runs in a fresh subprocess, so nothing
is shared with edgeq or an earlier run: load time, peak RSS of that process, time to first token
for a prompt of real text, prefill and decode tok/s, end-to-end time. A warm-up generation inside
each process comes before the timed one. Statistics over --reps: mean ± sd, min, median.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from edgeq import __version__, child, devicemem, report
from edgeq.checks import MAX, MIN, Check
from edgeq.config import setting
from edgeq.errors import BudgetError, UsageError
from edgeq.ggufcheck import check_gguf
from edgeq.io import claim_output, read_json, sha256_file
from edgeq.machine import cores, package_version, platform_info
from edgeq.onnxcheck import check_onnx_folder
from edgeq.profiles import load_profile
from edgeq.records import BenchResult, BenchSettings, Stats
from edgeq.runtime import (
    artifact_bytes,
    artifact_format,
    checked_adapters,
    fidelity_text,
    llama_config,
    llama_setup,
    load_adapters_here,
    use_adapter_here,
)
from edgeq.spec import BENCH_GEN_TOKENS, BENCH_OUTPUTS, FORMAT_GGUF

METRICS = ("load_s", "ttft_ms", "prefill_tok_s", "decode_tok_s", "e2e_s", "peak_rss_mib", "device_mib", "memory_mib")
WARMUP_TOKENS = 8


@dataclass
class BenchConfig:
    artifact: str = setting(help="a .gguf file or an ONNX GenAI folder", argument=True)
    profile: str | None = setting(None, "device profile NAME or PATH: gate every budget (exit 3 on breach)")
    prompt_tokens: int | None = setting(None, "prompt length [default: the profile's, else 512]", minimum=1)
    gen_tokens: int = setting(BENCH_GEN_TOKENS, "tokens generated per repetition", minimum=2)
    reps: int = setting(5, "repetitions, each in a fresh process", minimum=1)
    threads: int | None = setting(None, "runtime threads [default: the profile's, else all cores]", minimum=1)
    ctx: int | None = setting(None, "context [default: the profile's, else prompt + generated]", minimum=16)
    output: str = setting(BENCH_OUTPUTS[0], "output format", choices=BENCH_OUTPUTS)
    out: str | None = setting(None, "write the output here instead of stdout")
    force: bool = setting(False, "replace an existing --out that edgeq wrote")
    baseline: str | None = setting(None, "an earlier bench JSON: exit 3 on regression")
    regression_pct: float = setting(
        5.0, "allowed regression vs --baseline on tok/s and peak memory, in %", minimum=0, maximum=1000
    )
    gpu_layers: int = setting(
        0,
        "GGUF: layers to offload with a GPU build of llama.cpp; device memory then counts in the memory gate",
        minimum=0,
    )
    adapter: tuple[str, ...] = setting(
        (),
        "GGUF: a LoRA adapter for the artifact, its base (edgeq export --adapter); repeat it for several: all load in "
        "every repetition, the first is applied while timing, and switching to the next is timed (switch_ms)",
        repeated=True,
    )


def prompt_ids(encode, n: int) -> list[int]:
    """`n` tokens of real prose (the text cycles if one pass is not enough), never one repeated token."""
    ids = encode(fidelity_text())
    return (ids * (n // len(ids) + 1))[:n]


# ---------------------------------------------------------------------------------------------
# one repetition (runs in the child process)


def _greedy_next(llm) -> int:
    """argmax of the last position's logits, read in place from llama.cpp (no copy of the vocab row)."""
    import llama_cpp  # deferred: a native runtime, loaded only where it runs
    import numpy as np

    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return int(np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).argmax())


def _measure_gguf(
    path: str, n_prompt: int, n_gen: int, threads: int, n_ctx: int, gpu_layers: int, sample, adapters=()
) -> dict:
    """Prefill, then a greedy eval loop: what llama-bench times (tokenization and sampler chain excluded). With
    adapters: all loaded with the model (load time), the first applied; the switch to the second timed at the end."""
    from llama_cpp import Llama  # deferred: a native runtime, loaded only where it runs

    t0 = time.perf_counter()
    llm = Llama(
        path,
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=min(512, n_ctx),
        n_gpu_layers=gpu_layers,
        verbose=False,
    )
    loaded = load_adapters_here(llm, list(adapters))
    if loaded:
        use_adapter_here(llm, loaded[0])
    load_s = time.perf_counter() - t0
    sample()
    ids = prompt_ids(lambda s: llm.tokenize(s.encode("utf-8"), add_bos=False, special=False), n_prompt)
    llm.eval(ids[:WARMUP_TOKENS])  # warm-up: first-touch of weights and thread pool start
    _greedy_next(llm)
    llm.reset()
    t1 = time.perf_counter()
    llm.eval(ids)
    tok = _greedy_next(llm)
    first = time.perf_counter()
    sample()
    for _ in range(n_gen - 1):
        llm.eval([tok])
        tok = _greedy_next(llm)
    end = time.perf_counter()
    sample()
    out = {"load_s": load_s, "ttft_s": first - t1, "decode_s": end - first, "e2e_s": end - t1}
    if len(loaded) > 1:  # applying another loaded adapter; its first prompt is then prefilled anew (ttft)
        t2 = time.perf_counter()
        use_adapter_here(llm, loaded[1])
        out["switch_ms"] = 1000 * (time.perf_counter() - t2)
    return out


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) * 1024


def runtime_anon(path: str, n_prompt: int, n_gen: int, threads: int, n_ctx: int) -> int:
    """Anonymous bytes one GGUF repetition adds to this process (standin.py): the runtime's buffers, not the
    mmap-ed weights. In the child."""
    before, during = _rss_anon(), []
    _measure_gguf(path, n_prompt, n_gen, threads, n_ctx, 0, lambda: during.append(_rss_anon()))
    return max(during) - before  # read while the model lives: its buffers are freed with it


def _measure_onnx(path: str, n_prompt: int, n_gen: int, threads: int, n_ctx: int, gpu_layers: int, sample) -> dict:
    import onnxruntime_genai as og  # deferred: a native runtime, loaded only where it runs

    t0 = time.perf_counter()
    model = og.Model(path)
    tok = og.Tokenizer(model)
    load_s = time.perf_counter() - t0
    sample()
    ids = prompt_ids(lambda s: [int(t) for t in tok.encode(s)], n_prompt)

    def run(prompt, n):
        # max_length = n_ctx: the KV buffer GenAI allocates (shared past/present) is sized by it, as in serving
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=n_ctx, min_length=len(prompt) + n, do_sample=False)
        gen = og.Generator(model, params)
        t = time.perf_counter()
        gen.append_tokens(prompt)
        gen.generate_next_token()
        first = time.perf_counter()
        sample()
        for _ in range(n - 1):
            gen.generate_next_token()
        sample()
        return t, first, time.perf_counter()

    run(ids[:WARMUP_TOKENS], 2)
    t1, first, end = run(ids, n_gen)
    return {"load_s": load_s, "ttft_s": first - t1, "decode_s": end - first, "e2e_s": end - t1}


def peak_rss_mib() -> float:
    """This process's peak RSS. Linux: VmHWM, which exec resets; ru_maxrss would report the parent's
    peak when a large process (a build holding torch) spawned this one."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def onnx_uses_gpu(path: str | Path) -> bool:
    """Whether the GenAI folder asks for a GPU execution provider (the builder writes it into the config)."""
    cfg = check_onnx_folder(Path(path)) and read_json(Path(path) / "genai_config.json", "genai_config.json")
    options = cfg["model"]["decoder"].get("session_options", {}).get("provider_options", [])
    return any(k.lower() in ("cuda", "dml", "webgpu") for o in options if isinstance(o, dict) for k in o)


def measure(
    fmt: str, path: str, n_prompt: int, n_gen: int, threads: int, n_ctx: int, gpu_layers: int = 0, adapters=()
) -> dict:
    """One repetition, in the child. Memory = peak RSS + device memory (devicemem.py) where a GPU is used."""

    uses_gpu = gpu_layers > 0 if fmt == FORMAT_GGUF else onnx_uses_gpu(path)
    method, read = devicemem.reader(uses_gpu)
    readings = [read()]
    sample = lambda: readings.append(read())  # noqa: E731 - a reading at each phase of the run
    if fmt == FORMAT_GGUF:
        raw = _measure_gguf(path, n_prompt, n_gen, threads, n_ctx, gpu_layers, sample, adapters)
    else:
        raw = _measure_onnx(path, n_prompt, n_gen, threads, n_ctx, gpu_layers, sample)
    memory = devicemem.account(peak_rss_mib(), method, readings)
    return {
        "load_s": raw["load_s"],
        "ttft_ms": 1000 * raw["ttft_s"],
        "prefill_tok_s": n_prompt / raw["ttft_s"],
        "decode_tok_s": (n_gen - 1) / raw["decode_s"] if n_gen > 1 else float("nan"),
        "e2e_s": raw["e2e_s"],
        "peak_rss_mib": memory["peak_rss_mib"],
        "device_mib": memory["device_mib"],
        "memory_mib": memory["total_mib"],
        "memory_method": memory["method"],
    } | ({"switch_ms": raw["switch_ms"]} if "switch_ms" in raw else {})


def measure_in_child(
    fmt: str, path: str | Path, n_prompt: int, n_gen: int, threads: int, n_ctx: int, gpu_layers: int = 0, adapters=()
) -> dict:
    """One repetition in a fresh, isolated Python process (child.py): nothing loaded before it counts in its
    peak RSS, and a crash of the runtime is a message."""

    return child.call(
        "edgeq.bench:measure",
        "the benchmark",
        str(path),
        setup=llama_setup() if fmt == FORMAT_GGUF else None,
        fmt=fmt,
        path=Path(path),
        n_prompt=n_prompt,
        n_gen=n_gen,
        threads=threads,
        n_ctx=n_ctx,
        gpu_layers=gpu_layers,
        adapters=list(adapters),
    )


# ---------------------------------------------------------------------------------------------
# the stage (parent process)


def _stats(values: list[float]) -> Stats:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return Stats(statistics.fmean(values), sd, min(values), statistics.median(values), len(values), tuple(values))


def environment(artifact: Path) -> dict:
    import psutil

    plat = platform_info()
    size = artifact_bytes(artifact)
    return {
        "cpu": plat["cpu"],
        "cores": plat["cores_logical"],
        "ram_gib": plat["ram_gib"],
        "os": plat["os"],
        "machine": platform.machine(),
        "python": plat["python"],
        "edgeq": __version__,
        "libraries": {m: package_version(m) for m in ("llama_cpp", "onnxruntime", "onnxruntime_genai")},
        "runtime_config": {"llama_cpp": llama_config()} if artifact.is_file() else {},
        "artifact_sha256": sha256_file(artifact) if artifact.is_file() else None,
        "artifact_bytes": size,
        "total_ram_mib": psutil.virtual_memory().total / 2**20,
    }


def check_budgets(results: dict[str, Stats], env: dict, profile, n_prompt: int) -> list[Check]:
    """One check per budget of the profile: measured vs allowed."""
    checks = [
        # peak RSS + device memory where a GPU runtime was used (memory_method); the worst repetition
        Check("memory", "MiB", max(results["memory_mib"].samples), profile.memory_budget_mib, MAX),
        Check("storage", "MiB", env["artifact_bytes"] / 2**20, profile.storage_budget_mib, MAX),
        Check("decode", "tok/s", results["decode_tok_s"].median, profile.min_decode_tok_s, MIN),
    ]
    if n_prompt == profile.prompt_tokens:  # the TTFT budget is stated for the profile's prompt length
        checks.append(Check("ttft", "ms", results["ttft_ms"].median, profile.ttft_ms, MAX))
    return checks


def load_baseline(path: str) -> dict:
    """The results of an earlier `edgeq bench --output json`, checked before any measuring starts."""
    fix = "pass a file written by edgeq bench --output json"
    base = read_json(path, "baseline", fix, 16 << 20)
    try:
        values = {m: float(base["results"][m]["median"]) for m in ("decode_tok_s", "prefill_tok_s", "peak_rss_mib")}
    except (KeyError, TypeError, ValueError, OverflowError):
        raise UsageError("not an edgeq bench JSON", path, fix) from None
    bad = [m for m, v in values.items() if not (math.isfinite(v) and v > 0)]
    if bad:  # a NaN baseline would make every comparison false, and the gate pass
        raise UsageError(
            f"baseline {', '.join(bad)} is not a positive finite number", path, "re-run edgeq bench for the baseline"
        )
    return values


def check_baseline(results: dict[str, Stats], base: dict, pct: float) -> list[Check]:
    """Change in % from the baseline's median: at most `pct` worse, in each metric's worse direction."""
    checks = []
    for metric, better in (("decode_tok_s", "higher"), ("prefill_tok_s", "higher"), ("peak_rss_mib", "lower")):
        old, new = base[metric], results[metric].median
        change = 100 * (new - old) / old
        limit, kind = (-pct, MIN) if better == "higher" else (pct, MAX)
        checks.append(Check(f"baseline_{metric}", "%", change, limit, kind, baseline=old, current=new))
    return checks


def bench(cfg: BenchConfig) -> BenchResult:

    if cfg.output not in BENCH_OUTPUTS:
        raise UsageError(f"unknown --output {cfg.output!r}", None, f"use one of {', '.join(BENCH_OUTPUTS)}")
    artifact = Path(cfg.artifact)
    if cfg.out:
        profile_file = cfg.profile if cfg.profile and Path(cfg.profile).is_file() else None
        claim_output(cfg.out, [artifact, cfg.baseline, profile_file], cfg.force)
    fmt = artifact_format(artifact)
    if fmt == FORMAT_GGUF:
        check_gguf(artifact)
    adapters = checked_adapters(artifact, [Path(a) for a in cfg.adapter])
    profile = load_profile(cfg.profile) if cfg.profile else None
    baseline = load_baseline(cfg.baseline) if cfg.baseline else None
    n_prompt = cfg.prompt_tokens or (profile.prompt_tokens if profile else 512)
    threads = cfg.threads or (profile.threads if profile else cores())
    n_ctx = cfg.ctx or (profile.max_context_tokens if profile else n_prompt + cfg.gen_tokens + WARMUP_TOKENS)
    if cfg.reps < 1 or cfg.gen_tokens < 2 or n_prompt < 1 or n_ctx < n_prompt + cfg.gen_tokens or cfg.gpu_layers < 0:
        raise UsageError(
            "need --reps >= 1, --gen-tokens >= 2, --prompt-tokens >= 1, --ctx >= prompt + gen and --gpu-layers >= 0"
        )
    runs = []
    for rep in range(cfg.reps):
        report.err.print(f"bench {artifact.name}: repetition {rep + 1}/{cfg.reps} (fresh process) …")
        runs.append(measure_in_child(fmt, artifact, n_prompt, cfg.gen_tokens, threads, n_ctx, cfg.gpu_layers, adapters))
    results = {m: _stats([r[m] for r in runs]) for m in (*METRICS, "switch_ms") if m in runs[0]}
    methods = sorted({r["memory_method"] for r in runs})
    env = environment(artifact)
    checks = check_budgets(results, env, profile, n_prompt) if profile else []
    if baseline:
        checks += check_baseline(results, baseline, cfg.regression_pct)
    settings = BenchSettings(
        n_prompt,
        cfg.gen_tokens,
        cfg.reps,
        threads,
        n_ctx,
        cfg.gpu_layers,
        profile.name if profile else None,
        tuple(adapters),
    )
    accounting = {
        "method": methods[0] if len(methods) == 1 else methods,
        "gated": "memory_mib = peak_rss_mib (the process's VmHWM) + device_mib (devicemem.py: nvml, unified, none)",
    }
    backend = "llama.cpp" if fmt == FORMAT_GGUF else "onnxruntime-genai"
    return BenchResult(str(artifact), fmt, backend, settings, accounting, env, results, tuple(checks))


def gate(result: BenchResult) -> None:
    """A bench's verdict: a breached budget or regression is exit 3."""
    failed = [c for c in result.checks if not c.passed]
    if failed:
        raise BudgetError(
            "; ".join(c.line() for c in failed),
            result.artifact,
            "choose a smaller quant type or context, or relax the profile",
        )

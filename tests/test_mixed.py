"""mixed: the solver lands on the budget, keeps pinned tensors, says how small it can get; llama.cpp writes the
recipe's types (read back from the file); `edgeq export --quant auto` end to end on a tiny model."""

import itertools
import random
import re
from pathlib import Path

import numpy as np
import pytest

from edgeq import mixed
from edgeq.errors import BudgetError, EdgeqError
from edgeq.mixed import GAIN_BANDS, Option, Tensor, gain_groups, options_for, solve
from edgeq.spec import BUILD_MODELFILE, EXIT_BUDGET, QUANT_TYPES
from tests.conftest import make_tiny_model, run_edgeq

MIB = 2**20
TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]


def _problem(seed: int, n: int = 40) -> dict[str, list[Option]]:
    """n tensors of assorted shapes; error halves per extra bit, scaled by a random sensitivity per tensor."""
    rng = random.Random(seed)
    bits = {"Q2_K": 2.6, "Q3_K": 3.4, "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.6, "Q8_0": 8.5}
    out = {}
    for i in range(n):
        t = Tensor(f"blk.{i}.w", (256 * rng.randint(1, 6), rng.randint(64, 512)))
        s = rng.lognormvariate(0, 1.5)
        out[t.name] = options_for(t, {q: s * t.n * 2 ** -bits[q] for q in TYPES}, {})
    return out


def _totals(problem, recipe):
    chosen = [next(o for o in problem[n] if o.type == t) for n, t in recipe.items()]
    return sum(o.storage for o in chosen), sum(o.error for o in chosen)


@pytest.mark.parametrize("seed", range(5))
def test_solver_lands_on_the_budget_and_no_upgrade_is_left(seed):
    problem = _problem(seed)
    low = sum(min(o.storage for o in opts) for opts in problem.values())
    high = sum(max(o.storage for o in opts) for opts in problem.values())
    budget = low + (high - low) * (0.2 + 0.15 * seed)
    sol = solve(problem, budget, float("inf"))
    storage, error = _totals(problem, sol.recipe)
    assert storage == sol.storage <= budget
    assert error == pytest.approx(sol.error)
    for n, t in sol.recipe.items():  # exact: not one tensor could take a better type within the budget
        cur = next(o for o in problem[n] if o.type == t)
        assert all(o.error >= cur.error or storage - cur.storage + o.storage > budget for o in problem[n])
    # better than every uniform type that fits the same budget
    for q in TYPES:
        uniform = {n: q for n in problem}
        s, e = _totals(problem, uniform)
        if s <= budget:
            assert sol.error <= e


def test_solver_is_near_the_optimum_on_small_problems():
    """Exhaustive search over 5 tensors × 6 types: the greedy hull walk gives up at most 5 % of error."""
    for seed in range(6):
        problem = _problem(100 + seed, n=5)
        budget = sum(sorted(o.storage for o in opts)[2] for opts in problem.values())
        best = min(
            (
                sum(o.error for o in combo)
                for combo in itertools.product(*problem.values())
                if sum(o.storage for o in combo) <= budget
            ),
        )
        assert solve(problem, budget, float("inf")).error <= 1.05 * best


def test_solver_respects_the_memory_budget_too():
    problem = {
        n: [Option(o.type, o.storage, o.storage * (2.0 if o.type == "Q4_K" else 1.0), o.error) for o in opts]
        for n, opts in _problem(7).items()
    }
    high = sum(max(o.storage for o in opts) for opts in problem.values())
    sol = solve(problem, high, 0.5 * high)
    assert sol.memory <= 0.5 * high and sol.storage <= high


def test_an_impossible_budget_is_exit_3_with_the_smallest_reachable_size():
    problem = _problem(3)
    low = sum(min(o.storage for o in opts) for opts in problem.values())
    with pytest.raises(BudgetError) as e:
        solve(problem, low - 1, float("inf"))
    assert e.value.exit_code == EXIT_BUDGET
    assert f"the smallest is {low / MIB:.1f} MiB" in str(e.value)


def test_a_576_wide_row_cannot_take_k_quants():
    t = Tensor("blk.0.attn_q.weight", (576, 576))
    kinds = {o.type for o in options_for(t, {q: 1.0 for q in [*TYPES, "Q4_0", "Q5_0"]}, {})}
    assert kinds == {"Q8_0", "Q4_0", "Q5_0"}
    assert {o.type for o in options_for(t, {}, {}, forced="Q5_0")} == {"Q5_0"}


def test_the_hull_drops_dominated_types():
    opts = [Option("a", 10, 10, 5.0), Option("b", 20, 20, 6.0), Option("c", 30, 30, 1.0), Option("d", 15, 15, 4.9)]
    # b costs more than a and loses more; d lies above the segment a–c
    assert [o.type for o in mixed._hull(opts, lambda o: o.storage)] == ["a", "c"]


def test_gain_groups_split_each_class_into_contiguous_layer_bands():
    names = [f"blk.{i}.{c}.weight" for i in range(30) for c in ("attn_q", "ffn_down")] + ["token_embd.weight"]
    groups = gain_groups(names)
    assert groups["token_embd.weight"] == "token_embd.weight"
    assert groups["blk.0.attn_q.weight"] == groups["blk.5.attn_q.weight"] == "attn_q.weight[0-5]"
    assert groups["blk.6.ffn_down.weight"] == "ffn_down.weight[6-11]" and groups["blk.29.attn_q.weight"].endswith(
        "[24-29]"
    )
    assert len(set(groups.values())) == 1 + 2 * GAIN_BANDS
    for layers in (1, 3, 7, 31):  # uneven splits: every layer in exactly the band its label names
        banded = gain_groups([f"blk.{i}.attn_k.weight" for i in range(layers)])
        for name, g in banded.items():
            lo, hi = map(int, re.search(r"\[(\d+)-(\d+)\]", g).groups())
            assert lo <= int(name.split(".")[1]) <= hi
        assert len(set(banded.values())) == min(layers, GAIN_BANDS)


# ---------------------------------------------------------------------------------------------
# llama.cpp, end to end


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory, default_model):
    """A random model whose rows are 256 wide (K-quants allowed) except ffn_down's 384 (not)."""
    return make_tiny_model(
        tmp_path_factory.mktemp("wide") / "model", default_model, hidden_size=256, intermediate_size=384
    )


@pytest.fixture(scope="module")
def build_out(tmp_path_factory):
    """One build folder for the builds whose budget binds: the same base, data and steps under other profiles, so
    the second re-runs from the plan (the fine-tune, the merge and the float models' scores are kept), as a user's
    rebuild with another profile does."""
    return tmp_path_factory.mktemp("builds") / "out"


def _export_auto(model, *args):
    return run_edgeq("export", "--model", model, "--quant", "auto", *args)


def test_export_auto_fits_the_size_as_predicted_and_keeps_a_pinned_tensor(wide_model, tmp_path, small_data):
    """The solver's exactness (no upgrade left that fits) is tested above; here the file llama.cpp writes has the
    predicted size and the recipe's types."""
    out = tmp_path / "auto.gguf"
    r = _export_auto(
        wide_model,
        "--max-size-mib",
        "11",
        "--imatrix-data",
        small_data,
        "--tensor-type",
        "blk.0.attn_v.weight=Q2_K",
        "--out",
        out,
    )
    assert r.returncode == 0, r.stderr
    size = out.stat().st_size
    assert size <= 11 * MIB
    predicted = float(re.search(r"size ([\d.]+) MiB, peak RSS", r.stdout).group(1))
    assert abs(size / MIB - predicted) < 0.01 * predicted
    types = mixed.written_types(out)
    assert types["blk.0.attn_v.weight"] == "Q2_K"
    assert not any(t.endswith("_K") for n, t in types.items() if "ffn_down" in n)  # 384-wide rows
    assert len({t for n, t in types.items() if "norm" not in n}) >= 2  # a mixture, not one type


def test_export_auto_with_an_impossible_budget_is_exit_3_and_writes_nothing(wide_model, tmp_path):
    out = tmp_path / "auto.gguf"
    r = _export_auto(wide_model, "--max-size-mib", "2", "--out", out)
    assert r.returncode == EXIT_BUDGET, r.stderr
    assert "the smallest is" in r.stderr and "MiB" in r.stderr
    assert not out.exists()


def test_export_targets_need_auto(wide_model, tmp_path):
    r = run_edgeq("export", "--model", wide_model, "--max-size-mib", "9", "--out", tmp_path / "x.gguf")
    assert r.returncode == 2 and "--quant auto" in r.stderr
    r = _export_auto(wide_model, "--out", tmp_path / "x.gguf")
    assert r.returncode == 2


def test_verify_catches_a_type_llama_cpp_did_not_write(wide_model, tmp_path):
    from edgeq.export.gguf import quantize_gguf, write_float_gguf

    flt = tmp_path / "f16.gguf"
    write_float_gguf(wide_model, flt, "F16")
    dst = tmp_path / "q.gguf"
    quantize_gguf(flt, dst, "Q8_0")
    with pytest.raises(EdgeqError, match="another type than the recipe"):
        mixed.verify(dst, {"blk.0.attn_q.weight": "Q4_K"})


def test_a_priced_group_is_the_recipes_own_quantization_read_in_one_child(wide_model, tmp_path):
    """runtime.quantized_logits (what the pricing measures each group with) gives the logits of the file quantize()
    writes for the recipe, bit for bit, and leaves no file behind; the recipe is applied (not the float file)."""
    from edgeq.export.gguf import write_float_gguf
    from edgeq.runtime import quantize, quantized_logits, text_logits

    flt = tmp_path / "f16.gguf"
    write_float_gguf(wide_model, flt, "F16")
    recipe = {t.name: ("Q4_0" if t.name == "token_embd.weight" else "F16") for t in mixed.quantizable(flt)}
    texts = [list(range(10, 60)), list(range(300, 340))]
    ours = quantized_logits(flt, tmp_path / "group.gguf", "Q8_0", None, recipe, texts)
    assert not (tmp_path / "group.gguf").exists()
    quantize(flt, tmp_path / "two.gguf", "Q8_0", None, recipe)
    assert mixed.written_types(tmp_path / "two.gguf")["token_embd.weight"] == "Q4_0"
    theirs = text_logits(tmp_path / "two.gguf", texts)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not np.array_equal(ours[0], text_logits(flt, texts)[0])


def test_plan_adds_a_mixed_candidate_only_where_the_budget_binds(wide_model, tmp_path, small_data):
    import json

    import yaml

    drone = yaml.safe_load((Path(__file__).parent.parent / "profiles" / "drone.yaml").read_text())
    tight = drone | {"name": "tight", "storage_budget_mib": 11, "formats": ["gguf"], "max_context_tokens": 256}
    tight |= {
        "allowed_quant_types": ["Q8_0", "Q6_K", "Q4_K_M", "Q4_0"],
        "quality": {**drone["quality"], "max_mean_kld": 9},
    }
    path = tmp_path / "tight.yaml"
    path.write_text(yaml.safe_dump(tight))
    r = run_edgeq("plan", "--profile", path, "--model", wide_model, "--data", small_data, "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    rows = {(c["quant"], "recipe" in c): c for c in plan["candidates"]}
    assert not rows[("Q8_0", False)]["fits"] and not rows[("Q6_K", False)]["fits"]
    mixed = next(c for c in plan["candidates"] if "recipe" in c)
    assert mixed["fits"] and mixed["storage_mib"] <= 11 and plan["chosen"]["recipe"] == mixed["recipe"]
    assert set(mixed["recipe"].values()) <= set(mixed["mixed"]["palette"]) and len(set(mixed["recipe"].values())) > 1
    assert mixed["mixed"]["sensitivity"] == "importance-weighted quantization error, priced per class and layer band"
    gains = mixed["mixed"]["gains"]  # one measured KLD per group: token_embd, and the 7 linears of a block per band
    layers = json.loads((wide_model / "config.json").read_text())["num_hidden_layers"]
    assert layers <= GAIN_BANDS  # so each layer is a band of its own
    assert len(gains) == 1 + 7 * layers and all(g["kld"] >= 0 and g["gain"] >= 0 for g in gains.values())
    assert {g for g in gains if g.startswith("attn_v.")} == {f"attn_v.weight[{b}-{b}]" for b in range(layers)}

    loose = path.with_name("loose.yaml")
    loose.write_text(yaml.safe_dump(tight | {"name": "loose", "storage_budget_mib": 1024}))
    r = run_edgeq("plan", "--profile", loose, "--model", wide_model, "--json")
    assert r.returncode == 0, r.stderr
    assert not any("recipe" in c for c in json.loads(r.stdout)["candidates"])  # Q8_0 fits: nothing to mix


@pytest.mark.slow
def test_a_build_whose_budget_binds_ships_the_mixture_and_says_why(wide_model, tmp_path, small_data, build_out):
    """Storage 14 MiB: uniform Q8_0 (15.1 MiB) misses, Q4_K_M (12.0 MiB) fits; the mixture spends the rest."""
    import json

    import yaml

    drone = yaml.safe_load((Path(__file__).parent.parent / "profiles" / "drone.yaml").read_text())
    profile = drone | {"name": "binding", "storage_budget_mib": 14, "formats": ["gguf"], "max_context_tokens": 256}
    profile |= {"allowed_quant_types": ["Q8_0", "Q4_K_M"], "quality": {**drone["quality"], "max_mean_kld": 9}}
    profile["quality"]["max_task_accuracy_drop_points"] = 100
    profile["latency"] = {**drone["latency"], "ttft_ms": 600000, "min_decode_tok_s": 0.1}  # speed is not under test
    (tmp_path / "binding.yaml").write_text(yaml.safe_dump(profile))
    test = _held_out(small_data, build_out)
    out = build_out
    r = run_edgeq(
        "build",
        "--profile",
        tmp_path / "binding.yaml",
        "--base",
        wide_model,
        "--data",
        small_data,
        "--test-data",
        test,
        "--max-steps",
        1,
        "--reps",
        1,
        "--out",
        out,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    recipe = m["quant_recipe"]["recipe"]
    assert recipe and mixed.written_types(out / m["artifact"]["path"]).items() >= recipe.items()
    assert m["artifact"]["bytes"] <= 14 * MIB
    mx = m["quant_recipe"]["mixed"]
    assert len(mx["sensitivity_sha256"]) == 64 and mx["sensitivity_source"] == str(small_data)
    assert mx["best_uniform_that_fits"]["candidate"]["quant"] == "Q4_K_M"  # measured beside it
    report = (out / "report.md").read_text()
    assert "per-tensor mixture" in report and "the best uniform type that fits" in report


def test_a_bad_pin_is_a_usage_error_before_any_work(wide_model, tmp_path):
    from edgeq.calibration import machine_calibration
    from edgeq.errors import UsageError
    from edgeq.export.gguf import write_float_gguf
    from edgeq.pricing import plan_mixed

    r = _export_auto(
        wide_model,
        "--max-size-mib",
        "9",
        "--tensor-type",
        "token_embd.weight",
        "--out",
        tmp_path / "x.gguf",
    )
    assert r.returncode == 2 and "NAME=TYPE" in r.stderr
    flt = tmp_path / "f16.gguf"
    write_float_gguf(wide_model, flt, "F16")
    _, cal = machine_calibration()
    for pin, message in (
        ({"blk.0.ffn_down.weight": "Q4_K"}, "rows of 384 weights: Q4_K packs 256"),
        ({"blk.9.attn_q.weight": "Q8_0"}, "no quantizable tensor named"),
    ):
        with pytest.raises(UsageError, match=message):
            plan_mixed(wide_model, flt, ["Q8_0"], 256, 64, cal, 11, 1e6, None, tmp_path, forced=pin)


def _held_out(small_data: Path, out: Path) -> Path:
    """The first 3 examples, beside the build folder: the same file (and key) for every build into it."""
    test = out.parent / "test.jsonl"
    test.write_text("".join(small_data.read_text().splitlines(keepends=True)[:3]))
    return test


def _onnx_profile(tmp_path: Path, storage_mib: float) -> Path:
    """Drone budgets on ONNX alone, speed and quality out of the way: only storage can bind."""
    import yaml

    drone = yaml.safe_load((Path(__file__).parent.parent / "profiles" / "drone.yaml").read_text())
    profile = drone | {"name": f"onnx{storage_mib:g}", "storage_budget_mib": storage_mib, "formats": ["onnx"]}
    profile |= {"allowed_quant_types": ["int4-block32", "int4-block128", "int8"], "max_context_tokens": 256}
    profile["quality"] = {"max_mean_kld": 9, "max_task_accuracy_drop_points": 100}
    profile["latency"] = {**drone["latency"], "ttft_ms": 600000, "min_decode_tok_s": 0.1}
    path = tmp_path / f"onnx{storage_mib:g}.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def test_plan_adds_an_onnx_mixture_sized_to_the_budget_only_where_it_binds(wide_model, tmp_path):
    """The wide model's ONNX files: int8 65.6 MiB (its embedding stays float), int4-block32 18.1, --quant auto
    from 10.2 (every weight at its smallest choice) to 20.8 (all 8-bit in blocks of 16). At 15 MiB int8 and
    int4-block32 miss; the mixture takes the whole budget, its KLD a prior between int4's and int8's. At 50 MiB
    it stops at the largest layout; at 100 MiB int8 fits and there is no mixture."""
    import json

    r = run_edgeq("plan", "--profile", _onnx_profile(tmp_path, 15), "--model", wide_model, "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    rows = {c["quant"] + ("+mixed" if "recipe" in c else ""): c for c in plan["candidates"]}
    assert not rows["int8"]["fits"] and not rows["int4-block32"]["fits"]
    mixed = rows["int4-block32+mixed"]
    size = float(mixed["recipe"]["max_size_mib"])
    assert 14.9 < size <= 15 and mixed["storage_mib"] == size and mixed["fits"]
    assert "--quant auto --max-size-mib" in mixed["mixed"]["rule"]
    assert "ONNX 4-bit" in mixed["mixed"]["kld_prior_source"]
    assert QUANT_TYPES["int8"].prior_kld < mixed["kld"] < QUANT_TYPES["int4-block32"].prior_kld
    assert plan["chosen"] == {"format": "onnx", "quant": "int4-block32", "recipe": mixed["recipe"]}

    r = run_edgeq("plan", "--profile", _onnx_profile(tmp_path, 50), "--model", wide_model, "--json")
    assert r.returncode == 0, r.stderr
    mixed = next(c for c in json.loads(r.stdout)["candidates"] if "recipe" in c)
    assert 20.6 < float(mixed["recipe"]["max_size_mib"]) < 20.8  # every weight's largest choice: no need for more

    r = run_edgeq("plan", "--profile", _onnx_profile(tmp_path, 100), "--model", wide_model, "--json")
    assert r.returncode == 0, r.stderr
    assert not any("recipe" in c for c in json.loads(r.stdout)["candidates"])  # int8 fits: nothing to mix


@pytest.mark.slow
def test_a_build_whose_onnx_budget_binds_ships_the_solved_layout(wide_model, tmp_path, small_data, build_out):
    """At 17 MiB only int4-block128 (16.3 MiB) of the uniform types fits; the build exports --quant auto for the
    planned size: the artifact fits, the manifest records every weight's bits and block as the graph has them, and
    the report says what it gained over int4-block128, measured beside it."""
    import json

    import onnx

    test, out = _held_out(small_data, build_out), build_out
    args = ["--base", wide_model, "--data", small_data, "--test-data", test, "--max-steps", 1, "--reps", 1]
    r = run_edgeq("build", "--profile", _onnx_profile(tmp_path, 17), *args, "--out", out, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    qr = m["quant_recipe"]
    assert qr["format"] == "onnx" and m["artifact"]["bytes"] <= float(qr["recipe"]["max_size_mib"]) * MIB
    layout = qr["onnx"]["layout"]
    graph = onnx.load(str(out / m["artifact"]["path"] / "model.onnx"), load_external_data=False).graph
    written = {
        n.input[1].split(".MatMul.")[0]: "{bits}/{block_size}".format(**{a.name: a.i for a in n.attribute})
        for n in graph.node
        if n.op_type == "MatMulNBits"
    }
    assert written == layout and len(set(layout.values())) > 1
    assert qr["mixed"]["sensitivity_source"] == str(small_data)
    assert qr["mixed"]["best_uniform_that_fits"]["candidate"]["quant"] == "int4-block128"  # measured beside it
    report = (out / "report.md").read_text()
    assert "ONNX 4/8-bit mixture solved for" in report and "the best uniform type that fits" in report
    assert "Ollama Modelfile: none for an ONNX artifact" in report and not (out / BUILD_MODELFILE).exists()
    assert not list(out.glob("*.gguf"))  # an earlier build's GGUF artifact in this folder went with its Modelfile

import copy
import json

import pytest
import yaml

from edgeq.errors import ConfigError, UsageError
from edgeq.profiles import list_profiles, load_profile, validate
from edgeq.spec import EXIT_USAGE, PROFILE_NUMERIC_FIELDS
from tests.conftest import run_edgeq

SHIPPED = {"drone", "phone", "jetson-orin-nano", "pi-zero-2w"}


def _good() -> dict:
    return yaml.safe_load(open(load_profile("drone").source))


def _problems(data) -> list[str]:
    with pytest.raises(ConfigError) as e:
        validate(data, "test.yaml")
    return e.value.problems


def test_shipped_profiles_load_and_explain_every_number():
    profiles = {p.name: p for p in list_profiles()}
    assert set(profiles) >= SHIPPED
    for p in profiles.values():
        assert set(p.rationale) == set(PROFILE_NUMERIC_FIELDS)
        assert p.memory_budget_mib > 0 and p.formats and p.allowed_quant_types
    assert profiles["drone"].memory_budget_mib < profiles["phone"].memory_budget_mib


def test_load_by_name_and_by_path_agree(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(_good()))
    assert load_profile(str(p)).as_dict() | {"source": ""} == load_profile("drone").as_dict() | {"source": ""}


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UsageError) as e:
        load_profile("toaster")
    assert "unknown profile 'toaster'" in e.value.line() and "drone" in e.value.line()


def test_all_problems_reported_at_once():
    d = _good()
    d["memory_budget_mib"] = "4GB"  # unit typo
    d["storage_budget_mib"] = -1  # non-positive
    d["threads"] = 2.5  # wrong type
    d["colour"] = "red"  # unknown key
    d["latency"]["ttft_ms"] = 1e12  # absurd
    d["quality"]["max_kld"] = 0.1  # unknown nested key
    del d["max_context_tokens"]  # missing
    d["allowed_quant_types"] = ["Q4_K_M", "Q9_9"]  # unknown quant
    problems = _problems(d)
    joined = "\n".join(problems)
    for needle in (
        "memory_budget_mib: '4GB' looks like a number with a unit",
        "storage_budget_mib: -1 is outside",
        "threads: 2.5 is not an integer",
        "colour: unknown key",
        "latency.ttft_ms",
        "quality.max_kld: unknown",
        "max_context_tokens: missing",
        "'Q9_9' not known",
    ):
        assert needle in joined
    assert len(problems) == 8


@pytest.mark.parametrize("typo", ["4GB", "512 MiB", "2gb", "1.5GiB"])
def test_unit_typos_are_named(typo):
    d = _good()
    d["memory_budget_mib"] = typo
    assert "looks like a number with a unit" in _problems(d)[0]


def test_bool_is_not_a_number():
    d = _good()
    d["threads"] = True
    assert "is not an integer" in _problems(d)[0]


def test_rationale_must_cover_every_number():
    d = _good()
    del d["rationale"]["ttft_ms"]
    d["rationale"]["bogus"] = "x"
    problems = _problems(d)
    assert any("rationale.ttft_ms: missing" in p for p in problems)
    assert any("rationale.bogus" in p for p in problems)


def test_preferred_format_needs_a_quant_type():
    d = _good()
    d["formats"] = ["onnx"]
    d["allowed_quant_types"] = ["Q4_K_M"]
    assert "no quant type for preferred format 'onnx'" in _problems(d)[0]


def test_prompt_longer_than_context_is_rejected():
    d = _good()
    d["latency"]["prompt_tokens"] = d["max_context_tokens"] + 1
    assert "exceeds max_context_tokens" in _problems(d)[0]


def test_top_level_must_be_mapping():
    assert "top level must be a mapping" in _problems(["a", "b"])[0]


def test_yaml_is_parsed_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_profile(str(p))


def test_cli_show_json_and_bad_profile_exit_code(tmp_path):
    r = run_edgeq("profiles", "show", "drone", "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout)["memory_budget_mib"] == 512

    bad = copy.deepcopy(_good())
    bad["memory_budget_mib"], bad["threads"] = "4GB", 0
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    r = run_edgeq("profiles", "show", str(p))
    assert r.returncode == EXIT_USAGE
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: {p}: 2 problems")
    assert len(lines) == 3  # the header line, then one line per problem


def test_cli_list_json_has_every_shipped_profile():
    r = run_edgeq("profiles", "list", "--json")
    assert r.returncode == 0
    assert {p["name"] for p in json.loads(r.stdout)} >= SHIPPED

"""Hostile profile and baseline files: refused in one line, quickly, with bounded output."""

import json

import pytest
import yaml

from edgeq.errors import ConfigError, UsageError
from edgeq.profiles import load_profile
from edgeq.spec import EXIT_USAGE
from tests.conftest import cpu_seconds_of_children, run_edgeq


def _drone_text() -> str:
    with open(load_profile("drone").source) as f:
        return f.read()


def _drone() -> dict:
    return yaml.safe_load(_drone_text())


def test_alias_bomb_is_refused_at_once_with_a_short_message(tmp_path):
    rows = ["a: &a [x,x,x,x,x,x,x,x,x]"] + [
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefg", "bcdefgh", strict=True)
    ]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(rows) + "\n")  # 9^8 = 43 million strings once expanded
    t = cpu_seconds_of_children()
    r = run_edgeq("profiles", "show", p)
    assert r.returncode == EXIT_USAGE and "aliases (*a) are not allowed" in r.stderr
    assert len(r.stderr) < 500 and len(r.stdout) == 0 and cpu_seconds_of_children() - t < 10


def test_an_alias_inside_a_real_profile_is_refused_too(tmp_path):
    text = _drone_text().replace("max_context_tokens: 1024", "max_context_tokens: &c 1024")
    text += "\n# reused\n"
    text = text.replace("threads: 2", "threads: *c")
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(UsageError, match="aliases"):
        load_profile(str(tmp_path / "p.yaml"))


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused(tmp_path, value):
    text = _drone_text().replace("max_mean_kld: 0.1", f"max_mean_kld: {value}")
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_profile(str(tmp_path / "p.yaml"))
    assert any("quality.max_mean_kld" in p and "not a finite number" in p for p in e.value.problems)


@pytest.mark.parametrize("name", ["..", "../x", "/etc/edgeq", "a/b", "Drone", "", "x" * 65, "."])
def test_a_profile_name_is_a_plain_folder_name(tmp_path, name):
    d = _drone()
    d["name"] = name
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError) as e:
        load_profile(str(tmp_path / "p.yaml"))
    assert any(p.startswith("name: ") for p in e.value.problems), e.value.problems


def test_an_oversized_profile_is_refused(tmp_path):
    (tmp_path / "p.yaml").write_text("# " + "x" * (70 << 10) + "\n")
    with pytest.raises(UsageError, match="not a device profile"):
        load_profile(str(tmp_path / "p.yaml"))


@pytest.mark.parametrize(
    "bad, said",
    [
        (float("nan"), "NaN is not a number JSON allows"),  # refused as it is parsed, wherever it stands
        (0.0, "decode_tok_s is not a positive finite number"),
        (-5.0, "decode_tok_s is not a positive finite number"),
        (float("inf"), "Infinity is not a number JSON allows"),
    ],
)
def test_a_baseline_with_a_non_finite_or_zero_median_is_refused(tmp_path, bad, said):
    from edgeq.bench import load_baseline

    record = {"results": {m: {"median": 10.0} for m in ("decode_tok_s", "prefill_tok_s", "peak_rss_mib")}}
    record["results"]["decode_tok_s"]["median"] = bad
    (tmp_path / "b.json").write_text(json.dumps(record))
    with pytest.raises(UsageError, match=said):
        load_baseline(str(tmp_path / "b.json"))

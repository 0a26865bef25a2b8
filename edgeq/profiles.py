"""Device profiles: YAML files that set an edge device's memory, storage, latency and quality budgets.

A profile is looked up by name in the shipped `profiles/` folder or read from a path. Validation
is strict and collects every problem before raising, so one run shows them all.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import yaml

from edgeq import report
from edgeq.errors import ConfigError, UsageError
from edgeq.spec import (
    FORMATS,
    PROFILE_FIELDS,
    PROFILE_NUMERIC_FIELDS,
    PROFILE_SECTIONS,
    PROFILE_SUFFIX,
    QUANT_TYPES,
    SHIPPED_PROFILES,
)

PROFILE_HELP = "device profile: a shipped NAME (edgeq profiles list) or the PATH of a YAML file"


def profiles_dir() -> Path:
    """Shipped profiles: the top-level profiles/ folder, which the build backend ships as package data."""
    return Path(str(files(SHIPPED_PROFILES)))


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    memory_budget_mib: int
    storage_budget_mib: int
    max_context_tokens: int
    threads: int
    formats: tuple[str, ...]
    allowed_quant_types: tuple[str, ...]
    prompt_tokens: int
    ttft_ms: float
    min_decode_tok_s: float
    max_mean_kld: float
    max_task_accuracy_drop_points: float
    rationale: dict
    source: str
    calibration: str | None = None

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in PROFILE_FIELDS if f.required or getattr(self, f.name) is not None}
        out["formats"], out["allowed_quant_types"] = list(self.formats), list(self.allowed_quant_types)
        out["source"] = self.source
        return out


def list_profiles() -> list[Profile]:
    return [load_profile(str(p)) for p in sorted(profiles_dir().glob("*" + PROFILE_SUFFIX))]


def load_profile(name_or_path: str) -> Profile:
    """Load a shipped profile by name, or a user's YAML by path."""
    path = Path(name_or_path)
    if not (path.suffix in (PROFILE_SUFFIX, ".yml") or path.exists()):
        path = profiles_dir() / f"{name_or_path}{PROFILE_SUFFIX}"
        if not path.exists():
            known = ", ".join(p.stem for p in sorted(profiles_dir().glob("*" + PROFILE_SUFFIX)))
            raise UsageError(
                f"unknown profile {name_or_path!r}", None, f"use one of: {known}, or a path to a YAML file"
            )
    if not path.is_file():
        raise UsageError("profile file not found", str(path), "check the path")
    if path.stat().st_size > MAX_PROFILE_BYTES:
        raise UsageError(f"larger than {MAX_PROFILE_BYTES // 1024} KiB: not a device profile", str(path))
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader)  # safe_load without aliases
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UsageError(f"not valid YAML ({str(e).splitlines()[0]})", str(path), "fix the syntax") from None
    except (ValueError, RecursionError) as e:  # an integer past Python's digit limit; nesting past the stack
        raise UsageError(f"not a device profile ({str(e).splitlines()[0][:120]})", str(path), "fix the value") from None
    return validate(data, str(path))


MAX_PROFILE_BYTES = 64 << 10  # a profile is a page of numbers and reasons


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.safe_load, but anchors and aliases are refused: an alias bomb (a few hundred bytes that expand to
    gigabytes) has no place in a profile, and refusing is cheaper than bounding every message built from it."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed in a profile", event.start_mark
            )
        return super().compose_node(parent, index)


_UNIT_TYPO = re.compile(r"^\s*[0-9.]+\s*[a-zA-Z/%]+\s*$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def validate(data, source: str) -> Profile:
    """Check every key against spec.PROFILE_FIELDS; raise one ConfigError listing all problems."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"top level must be a mapping of keys, got {type(data).__name__}"], source)

    flat: dict = {}
    known_top = {f.name for f in PROFILE_FIELDS if f.section is None} | set(PROFILE_SECTIONS)
    for key in data:
        if key not in known_top:
            problems.append(f"{str(key)[:80]}: unknown key (expected one of: {', '.join(sorted(known_top))})")
    for section in PROFILE_SECTIONS:
        sub = data.get(section)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            problems.append(f"{section}: must be a mapping, got {_short(sub)}")
            continue
        known_sub = {f.name for f in PROFILE_FIELDS if f.section == section}
        for key in sub:
            if key not in known_sub:
                expected = ", ".join(sorted(known_sub))
                problems.append(f"{section}.{str(key)[:80]}: unknown key (expected one of: {expected})")
    for f in PROFILE_FIELDS:
        holder = data if f.section is None else data.get(f.section)
        key = f.name if f.section is None else f"{f.section}.{f.name}"
        if not isinstance(holder, dict) or f.name not in holder:
            if f.required:
                problems.append(f"{key}: missing ({f.help})")
            continue
        value, problem = _check(f, key, holder[f.name])
        if problem:
            problems.append(problem)
        else:
            flat[f.name] = value

    if isinstance(flat.get("rationale"), dict):
        for name in PROFILE_NUMERIC_FIELDS:
            if name not in flat["rationale"]:
                problems.append(f"rationale.{name}: missing (one line on why this number)")
        for name in flat["rationale"]:
            if name not in PROFILE_NUMERIC_FIELDS:
                problems.append(f"rationale.{name}: not a numeric field of the profile")
    if "formats" in flat and "allowed_quant_types" in flat:
        for fmt in flat["formats"]:
            if not any(QUANT_TYPES[q].fmt == fmt for q in flat["allowed_quant_types"]):
                problems.append(f"allowed_quant_types: no quant type for preferred format {fmt!r}")
    if "prompt_tokens" in flat and "max_context_tokens" in flat and flat["prompt_tokens"] > flat["max_context_tokens"]:
        problems.append(
            f"latency.prompt_tokens: {flat['prompt_tokens']} exceeds max_context_tokens {flat['max_context_tokens']}"
        )
    if problems:
        raise ConfigError(problems, source)
    return Profile(**flat, source=source)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"


def _check(f, key: str, value):
    """Return (normalized value, None) or (None, problem line)."""
    if f.kind in ("int", "float"):
        if isinstance(value, str) and _UNIT_TYPO.match(value):
            unit = f" in {f.unit}" if f.unit else ""
            return (
                None,
                f"{key}: {_short(value)} looks like a number with a unit; "
                f"write a plain number{unit} (the unit is in the key name)",
            )
        ok = isinstance(value, int) if f.kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            return None, f"{key}: {_short(value)} is not {'an integer' if f.kind == 'int' else 'a number'}"
        if not math.isfinite(value):
            return None, f"{key}: {_short(value)} is not a finite number"
        if value < f.minimum or value > f.maximum:
            return None, f"{key}: {value} is outside the sane range [{f.minimum:g}, {f.maximum:g}]"
        return (float(value) if f.kind == "float" else value), None
    if f.kind == "str":
        if not isinstance(value, str) or not value.strip():
            return None, f"{key}: {_short(value)} must be a non-empty string"
        return value.strip(), None
    if f.kind == "slug":
        if not isinstance(value, str) or not _SLUG.match(value) or ".." in value:
            return None, f"{key}: {_short(value)} must be a plain name ({f.help.split(': ', 1)[1]})"
        return value, None
    if f.kind in ("formats", "quants"):
        valid = FORMATS if f.kind == "formats" else tuple(QUANT_TYPES)
        if not isinstance(value, list) or not value:
            return None, f"{key}: {_short(value)} must be a non-empty list drawn from: {', '.join(valid)}"
        bad = [v for v in value if v not in valid]
        if bad:
            return None, f"{key}: {', '.join(map(repr, bad))} not known (valid: {', '.join(valid)})"
        if len(set(value)) != len(value):
            return None, f"{key}: {_short(value)} lists an entry twice"
        return tuple(value), None
    # rationale: mapping field -> one line of text
    if not isinstance(value, dict) or not all(isinstance(v, str) and v.strip() for v in value.values()):
        return None, f"{key}: must map each numeric field to one line of text"
    return dict(value), None


def list_view(items: list[Profile]):
    return report.table(
        "device profiles",
        ["name", "memory MiB", "storage MiB", "ctx", "threads", "formats", "TTFT ms", "decode tok/s"],
        [
            [
                p.name,
                p.memory_budget_mib,
                p.storage_budget_mib,
                p.max_context_tokens,
                p.threads,
                ", ".join(p.formats),
                f"{p.ttft_ms:g} @ {p.prompt_tokens} tok",
                f"≥ {p.min_decode_tok_s:g}",
            ]
            for p in items
        ],
    )


def view(p: Profile):
    """Every field with its value and the profile's reason for it (the field's help where it gives none)."""
    rows = []
    for f in PROFILE_FIELDS:
        if f.kind == "rationale":
            continue
        value = getattr(p, f.name)
        value = ", ".join(value) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) else value
        rows.append([f"{f.section}.{f.name}" if f.section else f.name, value, p.rationale.get(f.name, f.help)])
    return report.table(f"profile {p.name}", ["field", "value", "rationale"], rows, caption=p.source)

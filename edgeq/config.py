"""Settings of a stage: each written once, as a dataclass field with its default and its help.

The stage's config dataclass (FinetuneConfig, BuildConfig, …) is what the code reads; the command line is made
from the same fields (cli.options), so an option's default, type, choices, range and help text cannot drift from
the setting it fills. `setting(...)` is `dataclasses.field` with the metadata the CLI reads.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, field, fields


def setting(
    default=MISSING,
    help: str = "",
    *,
    choices: tuple | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    flag: str | None = None,
    argument: bool = False,
    listed: bool = False,
    repeated: bool = False,
):
    """A config field. `flag`: the option's spelling when it is not --field-name (e.g. "--format");
    `argument`: a positional argument; `listed`: a tuple given as one comma-separated option; `repeated`: a tuple
    given as the option repeated."""
    meta = {"help": help, "choices": choices, "min": minimum, "max": maximum, "flag": flag, "argument": argument}
    meta |= {"listed": listed, "repeated": repeated}
    if isinstance(default, (list, dict, set)):
        raise TypeError("a mutable default needs default_factory")
    return field(default=default, metadata=meta)


def problems(cfg) -> list[str]:
    """Every setting of `cfg` outside its field's choices or range, or not a finite number where one is due: one
    line each, named as its option (the CLI checks the same bounds; a config built in code is checked here)."""
    out = []
    for f in fields(cfg):
        value, meta = getattr(cfg, f.name), f.metadata
        name = f"--{f.name.replace('_', '-')} {value!r}"
        if value is None or not meta:
            continue
        if meta.get("choices") is not None and value not in meta["choices"]:
            out.append(f"{name}: expected one of {', '.join(map(str, meta['choices']))}")
        if meta.get("min") is None and meta.get("max") is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            out.append(f"{name}: must be a finite number")
        elif not (meta["min"] is None or value >= meta["min"]) or not (meta["max"] is None or value <= meta["max"]):
            lo, hi = (
                "" if b is None else f"{b:d}" if isinstance(b, int) else f"{b:g}" for b in (meta["min"], meta["max"])
            )
            out.append(f"{name}: must be in [{lo}, {hi}]")
    return out

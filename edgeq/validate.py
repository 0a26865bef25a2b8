"""Shapes and numbers read back from files: one UsageError naming the field, the file and the fix.

A file edgeq reads (a calibration, a points file, a build's stage record, a probe cache, a manifest,
a model's config.json) may be cut short, hand-edited or crafted. Its numbers pass through here: finite,
in range, of the right type (a bool is not a number), before any of them reaches a prediction or a gate.
JSON text itself is parsed by io.parse_json (bounded digits, no NaN or Infinity).
"""

from __future__ import annotations

import math

from edgeq.errors import UsageError


class Fields:
    """Typed reads from one mapping of one file: `Fields(obj, where, fix).number("gguf.base_mib", lo=0)`."""

    def __init__(self, obj, where: str, fix: str, what: str = "file"):
        self.where, self.fix, self.what = where, fix, what
        self.obj = self.mapping("", obj)

    def bad(self, name: str, problem: str) -> UsageError:
        return UsageError(f"{self.what}: {name + ' ' if name else ''}{problem}", self.where, self.fix)

    def get(self, name: str):
        """The value at a dotted path (`gguf.base_mib`); a missing key is an error."""
        value = self.obj
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                raise self.bad(name, "is missing")
            value = value[part]
        return value

    def mapping(self, name: str, value=None) -> dict:
        value = self.get(name) if value is None and name else value
        if not isinstance(value, dict):
            raise self.bad(name, f"must be a mapping, not {type(value).__name__}")
        return value

    def listing(self, name: str, value=None, max_items: int = 1 << 20) -> list:
        value = self.get(name) if value is None else value
        if not isinstance(value, list):
            raise self.bad(name, f"must be a list, not {type(value).__name__}")
        if len(value) > max_items:
            raise self.bad(name, f"has {len(value)} items, more than {max_items}")
        return value

    def text(self, name: str, value=None) -> str:
        value = self.get(name) if value is None else value
        if not isinstance(value, str):
            raise self.bad(name, f"must be a string, not {type(value).__name__}")
        return value

    def number(self, name: str, value=None, lo: float = -math.inf, hi: float = math.inf, integer: bool = False):
        value = self.get(name) if value is None else value
        return number(value, name, lo, hi, integer, self.bad)


def number(value, name: str, lo: float, hi: float, integer: bool, bad):
    """`value` as a finite int or float in [lo, hi]; `bad(name, problem)` builds the error."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise bad(name, f"must be {kind}, not {type(value).__name__}")
    if not math.isfinite(value) or not lo <= value <= hi:
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        raise bad(name, f"is {shown}: must be {kind} in [{lo:g}, {hi:g}]")
    return value

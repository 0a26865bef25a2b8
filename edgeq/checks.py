"""A budget check: a measurement against a limit, passed on the side its kind says.

One rule for every gate that compares a number with a budget (bench's profile and baseline
checks, build's quality checks), so a `max` check can never be compared with `>=` somewhere.
A NaN measurement fails both kinds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MAX = "max"  # passes when measured <= limit
MIN = "min"  # passes when measured >= limit


@dataclass(frozen=True)
class Check:
    name: str
    unit: str
    measured: float
    limit: float
    kind: str  # MAX or MIN
    baseline: float | None = None  # baseline checks: measured is the change in % from baseline to current
    current: float | None = None

    def __post_init__(self):
        if self.kind not in (MAX, MIN):
            raise ValueError(f"check {self.name}: kind must be {MAX!r} or {MIN!r}, not {self.kind!r}")

    @property
    def passed(self) -> bool:
        return self.measured <= self.limit if self.kind == MAX else self.measured >= self.limit

    def line(self) -> str:
        """`ttft 19.2 ms vs max 1`: what a breach message and a report row say."""
        return f"{self.name} {self.measured:.4g} {self.unit} vs {self.kind} {self.limit:g}"

    def as_dict(self) -> dict:
        """The JSON form (bench record, stage results, manifest): the fields, and whether it passed."""
        return {k: v for k, v in asdict(self).items() if v is not None} | {"passed": self.passed}

    @classmethod
    def from_dict(cls, d: dict) -> Check:
        return cls(**{k: v for k, v in d.items() if k != "passed"})

"""One exception hierarchy. Each error knows its exit code and renders as one line."""

from __future__ import annotations

from edgeq.spec import EXIT_BUDGET, EXIT_RUNTIME, EXIT_USAGE


class EdgeqError(Exception):
    """A failure the user can act on: what went wrong, where, and how to fix it."""

    exit_code = EXIT_RUNTIME

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        super().__init__(what)
        self.what, self.where, self.fix = what, where, fix

    def line(self) -> str:
        parts = [f"{self.where}: {self.what}" if self.where else self.what]
        if self.fix:
            parts.append(self.fix)
        return "error: " + " — ".join(parts)


class UsageError(EdgeqError):
    """Invalid option, path or input file."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A config (such as a device profile) failed validation; carries every problem found."""

    def __init__(self, problems: list[str], where: str | None = None):
        self.problems = problems
        n = len(problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''}", where, "fix these and run again")

    def line(self) -> str:
        # One line per problem, so a file with five mistakes is fixed in one pass.
        return "\n".join([super().line(), *(f"  - {p}" for p in self.problems)])


class BackendError(EdgeqError):
    """A backend library (torch, bitsandbytes, llama.cpp, ONNX Runtime) is missing or broken."""


class BudgetError(EdgeqError):
    """The artifact breaks a budget of the device profile."""

    exit_code = EXIT_BUDGET

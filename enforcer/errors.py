"""Policy errors with a code, a message and a location, reported all at once and sorted."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Location:
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, order=True)
class PolicyError:
    """One problem in a policy file, printed as ``FILE:LINE:COL: code: message``."""

    location: Location
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.code}: {self.message}"


class PolicyInvalid(Exception):
    """Raised when a policy does not load; carries every error found, sorted."""

    def __init__(self, errors: list[PolicyError]):
        self.errors = sorted(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    def report(self) -> str:
        return "\n".join(str(e) for e in self.errors)

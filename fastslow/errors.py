"""The error family every fastslow component raises.

Errors are classes built from typed fields, so callers can act on them and the message says
what was wrong, where, and what to do about it. All of them derive from `FastslowError`.
"""

from __future__ import annotations

from typing import Any


class FastslowError(Exception):
    """Root of every error fastslow raises on purpose.

    ``exit_code`` is what the command line exits with when one ends a command: 1 (a
    failure) unless the class says the command was called wrongly (2, like a usage error).
    """

    exit_code = 1


class ConfigError(FastslowError):
    """A setting or option has a value the component cannot work with."""

    exit_code = 2

    def __init__(self, setting: str, value: Any, expected: str) -> None:
        self.setting, self.value, self.expected = setting, value, expected
        super().__init__(f"setting {setting}={value!r} is invalid: expected {expected}")


class EventLogError(FastslowError):
    """A row of an event log could not be turned into an interaction.

    >>> str(EventLogError("log.csv", 7, "user_id: must not be empty"))
    'log.csv row 7: user_id: must not be empty (fix the row, or pass --on-error skip to skip bad rows)'
    """

    def __init__(self, path: str, row: int | None, reason: str) -> None:
        self.path, self.row, self.reason = str(path), row, reason
        where = self.path if row is None else f"{self.path} row {row}"
        super().__init__(f"{where}: {reason} (fix the row, or pass --on-error skip to skip bad rows)")


class ServiceError(FastslowError):
    """A local service (broker, object store, Redis) could not be started or reached."""

    def __init__(self, service: str, reason: str, hint: str = "") -> None:
        self.service, self.reason, self.hint = service, reason, hint
        super().__init__(f"{service}: {reason}" + (f" ({hint})" if hint else ""))

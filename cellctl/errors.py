"""The one exception hierarchy of cellctl: every failure a caller may handle is a CellctlError."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class CellctlError(Exception):
    """Root of every error cellctl raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a file a person wrote, located as precisely as we can."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path or '<root>'}: {self.message}"


class ConfigError(CellctlError):
    """A configuration or recipe file is invalid; carries every issue found, not only the first."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        super().__init__("\n".join(str(i) for i in self.issues) or "invalid configuration")


class DeviceError(CellctlError):
    """A device could not do what was asked."""

    def __init__(self, device: str, message: str, *, tag: str | None = None) -> None:
        self.device = device
        self.tag = tag
        where = f"{device}.{tag}" if tag else device
        super().__init__(f"{where}: {message}")


class CommError(DeviceError):
    """The link to a device failed (timeout, refused, dropped, malformed reply)."""


class DeviceFault(DeviceError):
    """The device answered but reports a fault (exception code, fault code, Bad status)."""


class WriteVerifyError(DeviceError):
    """A value read back after a write differs from what was written."""


class InvalidTransition(CellctlError):
    """A PackML command is not allowed in the current state."""

    def __init__(self, state: str, command: str) -> None:
        self.state = state
        self.command = command
        super().__init__(f"command {command!r} is not allowed in state {state!r}")


class InterlockTripped(CellctlError):
    """An interlock condition stopped an action."""


class SequenceError(CellctlError):
    """A changeover plan could not be built or run."""


class PlanError(SequenceError):
    """A changeover request is invalid (unknown variant, parameter out of range, cycle, missing device)."""


class StepFailed(SequenceError):
    """A changeover step failed."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(f"step {step!r}: {message}")


class StepTimeout(StepFailed):
    """A changeover step did not finish within its timeout."""


class PlanHeld(SequenceError):
    """A changeover run was held."""


class PlanAborted(SequenceError):
    """A changeover run was aborted."""


class JobError(CellctlError):
    """An order is invalid or cannot be accepted (unknown variant, bad parameters, duplicate id)."""


class StoreError(CellctlError):
    """The store could not keep a record."""


class ApiError(CellctlError):
    """A control API request failed; carries a machine-readable code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)

"""The one exception hierarchy of cellctl: every failure a caller may handle is a CellctlError."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar


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
    """A value read back after a write differs from what was written (or could not be read back)."""

    def __init__(
        self,
        device: str,
        message: str,
        *,
        tag: str | None = None,
        written: object = None,
        read_back: object = None,
    ) -> None:
        self.written = written
        self.read_back = read_back
        super().__init__(device, message, tag=tag)


MODBUS_EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
"""Modbus exception codes by number, named as the Modbus application protocol names them."""


class ModbusExceptionError(DeviceFault):
    """A Modbus device answered a request with an exception code (``code``, ``name``).

    ``ModbusExceptionError.of`` returns the subclass of the code, so callers can catch one kind by type;
    codes without a subclass (5, 8, unknown) are plain ModbusExceptionErrors. docs/integrator.md lists
    the driver's reaction to each.
    """

    CODE: ClassVar[int] = 0
    _BY_CODE: ClassVar[dict[int, type[ModbusExceptionError]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.CODE:
            ModbusExceptionError._BY_CODE[cls.CODE] = cls

    def __init__(self, device: str, code: int, what: str, *, tag: str | None = None) -> None:
        self.code = code
        self.name = MODBUS_EXCEPTION_NAMES.get(code, "unknown")
        super().__init__(device, f"{what}: exception code {code} ({self.name})", tag=tag)

    @classmethod
    def of(cls, device: str, code: int, what: str, *, tag: str | None = None) -> ModbusExceptionError:
        """The error for exception ``code`` in answer to ``what`` (e.g. "read of 2 coil(s) at 0")."""
        return cls._BY_CODE.get(code, ModbusExceptionError)(device, code, what, tag=tag)


class ModbusIllegalFunction(ModbusExceptionError):
    """Exception 1: the device does not support the function (a configuration mismatch)."""

    CODE = 1


class ModbusIllegalAddress(ModbusExceptionError):
    """Exception 2: the address range does not exist on the device (a configuration mismatch)."""

    CODE = 2


class ModbusIllegalValue(ModbusExceptionError):
    """Exception 3: the device refuses the value (a write) or the quantity (a read)."""

    CODE = 3


class ModbusDeviceFailure(ModbusExceptionError):
    """Exception 4: the device failed while serving the request."""

    CODE = 4


class ModbusDeviceBusy(ModbusExceptionError):
    """Exception 6: the device is busy; it did not execute the request."""

    CODE = 6


class ModbusGatewayError(ModbusExceptionError, CommError):
    """Exceptions 10 and 11: the unit behind a gateway is unreachable; a link failure of that unit."""


class ModbusGatewayPathUnavailable(ModbusGatewayError):
    """Exception 10: the gateway has no path to the unit."""

    CODE = 10


class ModbusGatewayTargetFailed(ModbusGatewayError):
    """Exception 11: the unit behind the gateway did not answer."""

    CODE = 11


class InvalidTransition(CellctlError):
    """A PackML command is not allowed in the current state."""

    def __init__(self, state: str, command: str) -> None:
        self.state = state
        self.command = command
        super().__init__(f"command {command!r} is not allowed in state {state!r}")


class ModeRefused(InvalidTransition):
    """A unit-mode change, or a command the current unit mode does not allow, was refused; says why."""

    def __init__(self, state: str, command: str, why: str) -> None:
        super().__init__(state, command)
        self.args = (f"command {command!r} is not allowed in state {state!r}: {why}",)


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
    """A changeover run parked on a hold: ``done`` lists the steps it completed, ``cut`` those it stopped."""

    def __init__(self, message: str, *, done: Sequence[str] = (), cut: Sequence[str] = ()) -> None:
        self.done: tuple[str, ...] = tuple(done)
        self.cut: tuple[str, ...] = tuple(cut)
        super().__init__(message)


class PlanAborted(SequenceError):
    """A changeover run was aborted."""


class JobError(CellctlError):
    """An order is invalid or cannot be accepted (unknown variant, bad parameters, duplicate id)."""


class OrderConflict(JobError):
    """The store already holds this order id for another job: the same order (``same_content``) or not."""

    def __init__(self, order_id: str, job_id: str, *, same_content: bool) -> None:
        what = "the same content" if same_content else "different content"
        super().__init__(f"order {order_id!r}: already accepted as job {job_id} with {what}")
        self.order_id = order_id
        self.job_id = job_id
        self.same_content = same_content


class FirstArticleFailed(CellctlError):
    """A part made in first-article qualification did not pass: the cell holds with this as the reason."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(f"first article {part}: {message}")
        self.part = part


class SpcHold(CellctlError):
    """A control-chart rule configured to hold fired: the cell holds with this as the reason."""

    def __init__(self, variant: str, characteristic: str, rule: int, message: str) -> None:
        super().__init__(message)
        self.variant = variant
        self.characteristic = characteristic
        self.rule = rule


class StoreError(CellctlError):
    """The store could not keep a record; ``cause`` says why in one word, ``advice`` what a person can do."""

    cause: ClassVar[str] = "error"
    advice: ClassVar[str] = ""


class StoreFull(StoreError):
    """The disk (or the file's page limit) is full: SQLITE_FULL."""

    cause = "disk_full"
    advice = "free disk space on the store's file system; the cell recovers by itself, then Unhold"


class StoreLocked(StoreError):
    """Another connection holds the database lock past the busy timeout: SQLITE_BUSY / LOCKED."""

    cause = "locked"
    advice = "find and stop the other process holding the store file open (e.g. `fuser FILE`), then Unhold"


class StoreCorrupt(StoreError):
    """The file is not a database or is malformed: SQLITE_CORRUPT / SQLITE_NOTADB; the store reopens it."""

    cause = "corrupt"
    advice = "stop cellctl and restore the store file from a backup (or move it aside to start afresh)"


class StoreIOError(StoreError):
    """The operating system failed a read or write of the file: SQLITE_IOERR; the store reopens it."""

    cause = "io_error"
    advice = "check the disk and the file system (dmesg) holding the store file; the store reopens it"


class StoreTooNew(StoreError):
    """The file was written by a newer cellctl (a schema version this one does not know): never opened."""

    cause = "too_new"
    advice = "install a cellctl that knows this schema version, or restore a backup made by this version"


class OutboxFull(StoreError):
    """The outbox is at its bound and holds only records, which are never dropped: nothing was written."""

    cause = "outbox_full"
    advice = "let the publisher drain the outbox (check the broker link) or raise store.outbox limits"


class ApiError(CellctlError):
    """A control API request failed; carries a machine-readable code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class ConfirmError(CellctlError):
    """An operator's confirmation was refused: no such pending step, or evidence that does not match."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"step {step!r}: {message}")
        self.step = step


class WriteInhibited(DeviceError):
    """A write or method call was refused because the e-stop is active: no command leaves after its edge."""


class AlarmError(CellctlError):
    """An alarm operation was refused: no such alarm, or nothing left to acknowledge."""

    def __init__(self, alarm: str, message: str) -> None:
        super().__init__(f"alarm {alarm!r}: {message}")
        self.alarm = alarm

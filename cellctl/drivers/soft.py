"""In-memory Driver for unit tests and dry runs: tags are plain values a test can set and script."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence

from cellctl.core.clock import Clock, SystemClock
from cellctl.core.devices import MethodSignature, ValueKind
from cellctl.core.ports import Health, HealthCallback, LinkState
from cellctl.core.tags import Quality, Reading, ReadingCallback, TagValue
from cellctl.errors import CommError, DeviceError
from cellctl.schema.cell import DeviceConfig

WriteHook = Callable[[str, TagValue], None]
"""Called after a write was taken, with (tag, value); a test uses it to play the device's reaction."""
CallHandler = Callable[[tuple[TagValue, ...]], Sequence[TagValue]]
"""Plays a method of the device: takes the arguments, returns the outputs (or raises, e.g. DeviceFault)."""

_DEFAULTS: dict[ValueKind, TagValue] = {
    ValueKind.BOOL: False,
    ValueKind.INT: 0,
    ValueKind.FLOAT: 0.0,
    ValueKind.STRING: "",
}


def _kind_of(value: TagValue) -> ValueKind:
    if isinstance(value, bool):
        return ValueKind.BOOL
    if isinstance(value, int):
        return ValueKind.INT
    return ValueKind.FLOAT if isinstance(value, float) else ValueKind.STRING


def _fits(value: TagValue, kind: ValueKind) -> bool:
    # An integer is a fine float, as the drivers' codec takes it.
    return _kind_of(value) is kind or (kind is ValueKind.FLOAT and _kind_of(value) is ValueKind.INT)


class SoftDriver:
    """A device made of in-memory tags: writes are recorded, hooks play the device, health is settable."""

    def __init__(
        self,
        device: str,
        tags: Iterable[str],
        *,
        writable: Iterable[str] | None = None,
        initial: Mapping[str, TagValue] | None = None,
        clock: Clock | None = None,
        methods: Mapping[str, MethodSignature] | None = None,
    ) -> None:
        self._device = device
        self._clock = clock or SystemClock()
        names = list(tags)
        self._writable = set(names if writable is None else writable)
        self._values: dict[str, Reading] = {
            name: Reading.bad(self._clock.monotonic(), "never set") for name in names
        }
        self._watchers: list[ReadingCallback] = []
        for name, value in (initial or {}).items():
            self._store(name, value, Quality.GOOD)
        self._health_watchers: list[HealthCallback] = []
        self._write_hooks: list[WriteHook] = []
        self._health = Health(device, LinkState.UP, self._clock.monotonic())
        self.writes: list[tuple[str, TagValue]] = []
        """Every write taken, in order: tests count actuator commands with it."""
        self.fail_writes: dict[str, Exception] = {}
        """Tag name -> exception a write of it raises (fault injection)."""
        self._methods: dict[str, MethodSignature | None] = dict(methods or {})
        self._call_handlers: dict[str, CallHandler] = {}
        self.calls: list[tuple[str, tuple[TagValue, ...]]] = []
        """Every method call taken, in order, with its arguments: tests count commands with it."""
        self.fail_calls: dict[str, Exception] = {}
        """Method name -> exception a call of it raises (fault injection)."""

    @classmethod
    def from_config(
        cls,
        device: str,
        config: DeviceConfig,
        *,
        initial: Mapping[str, TagValue] | None = None,
        clock: Clock | None = None,
    ) -> SoftDriver:
        """A soft device with the tags and write permissions of a configured device."""
        return cls(
            device,
            config.tags,
            writable=[name for name, tag in config.tags.items() if tag.writable],
            initial=initial,
            clock=clock,
            methods=config.method_signatures,
        )

    @property
    def device(self) -> str:
        """Device name."""
        return self._device

    @property
    def health(self) -> Health:
        """Current link health (UP unless a test says otherwise)."""
        return self._health

    def _known(self, tag: str) -> None:
        if tag not in self._values:
            raise DeviceError(self._device, "no such tag", tag=tag)

    def _store(self, tag: str, value: TagValue | None, quality: Quality, reason: str = "") -> None:
        self._known(tag)
        reading = Reading(value=value, timestamp=self._clock.monotonic(), quality=quality, reason=reason)
        self._values[tag] = reading
        for callback in list(self._watchers):
            callback(tag, reading)

    async def read(self, tag: str) -> Reading:
        """The tag's current reading (BAD while the link is set down)."""
        self._known(tag)
        if self._health.state is not LinkState.UP:
            return Reading.bad(self._clock.monotonic(), "link down")
        return self._values[tag]

    async def write(self, tag: str, value: TagValue) -> None:
        """Take a write: refuse read-only tags and a down link, record it, store it, run the hooks."""
        self._known(tag)
        if tag not in self._writable:
            raise DeviceError(self._device, "tag is not writable", tag=tag)
        if self._health.state is not LinkState.UP:
            raise CommError(self._device, "link down", tag=tag)
        if tag in self.fail_writes:
            raise self.fail_writes[tag]
        self.writes.append((tag, value))
        self._store(tag, value, Quality.GOOD)
        for hook in list(self._write_hooks):
            hook(tag, value)

    async def call(self, method: str, args: Sequence[TagValue]) -> tuple[TagValue, ...]:
        """Take a method call: check it against the declared signature, record it, play its handler.

        Without a handler a declared method returns default outputs (0, False, '', 0.0), as for a dry run.
        """
        if method not in self._methods:
            known = ", ".join(self._methods) or "none"
            raise DeviceError(self._device, f"no method {method!r} (methods: {known})")
        if self._health.state is not LinkState.UP:
            raise CommError(self._device, f"link down: method {method!r} not called")
        arguments = tuple(args)
        signature = self._methods[method]
        if signature is not None:
            self._check_args(method, arguments, signature)
        if method in self.fail_calls:
            raise self.fail_calls[method]
        self.calls.append((method, arguments))
        handler = self._call_handlers.get(method)
        if handler is not None:
            return tuple(handler(arguments))
        return tuple(_DEFAULTS[kind] for kind in (signature.outputs if signature else ()))

    def _check_args(self, method: str, args: tuple[TagValue, ...], signature: MethodSignature) -> None:
        if len(args) != len(signature.inputs):
            raise DeviceError(
                self._device, f"method {method!r} takes {len(signature.inputs)} argument(s), not {len(args)}"
            )
        for index, (value, kind) in enumerate(zip(args, signature.inputs, strict=True), start=1):
            if not _fits(value, kind):
                raise DeviceError(
                    self._device, f"method {method!r} argument {index} takes a {kind}, not {value!r}"
                )

    def on_call(self, method: str, handler: CallHandler) -> Callable[[], None]:
        """Play ``method``: ``handler`` answers each call (replacing any handler before); returns the remover.

        A method the device was not built with becomes known, with its arguments unchecked.
        """
        self._methods.setdefault(method, None)
        self._call_handlers[method] = handler

        def remove() -> None:
            if self._call_handlers.get(method) is handler:
                del self._call_handlers[method]

        return remove

    def last(self, tag: str) -> Reading:
        """The newest reading without I/O."""
        self._known(tag)
        return self._values[tag]

    def watch(self, callback: ReadingCallback) -> Callable[[], None]:
        """Call back on every new reading."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def on_health(self, callback: HealthCallback) -> Callable[[], None]:
        """Call back on every health change."""
        self._health_watchers.append(callback)
        return lambda: self._health_watchers.remove(callback) if callback in self._health_watchers else None

    def on_write(self, hook: WriteHook) -> Callable[[], None]:
        """Play the device: ``hook`` runs after each write taken."""
        self._write_hooks.append(hook)
        return lambda: self._write_hooks.remove(hook) if hook in self._write_hooks else None

    def set(self, tag: str, value: TagValue, quality: Quality = Quality.GOOD, reason: str = "") -> None:
        """Change a tag as the device would (notifies watchers)."""
        self._store(tag, value, quality, reason)

    def set_bad(self, tag: str, reason: str) -> None:
        """Make a tag's value unknown."""
        self._store(tag, None, Quality.BAD, reason)

    def set_health(self, state: LinkState, error: str = "") -> None:
        """Change the link state (notifies health watchers)."""
        self._health = Health(self._device, state, self._clock.monotonic(), error)
        for callback in list(self._health_watchers):
            callback(self._health)

    async def run(self) -> None:
        """Nothing to supervise: wait until cancelled."""
        await asyncio.Event().wait()

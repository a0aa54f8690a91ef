"""Composition root: builds the controller from a config and owns every task's lifetime and shutdown order."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from cellctl.api.mqtt_orders import MqttOrders
from cellctl.api.server import ControlServer
from cellctl.api.service import ControlService
from cellctl.core.clock import Clock, SystemClock
from cellctl.core.events import DeviceHealthChanged, Severity
from cellctl.core.ports import Driver, Health, LinkState
from cellctl.drivers import build_driver
from cellctl.engine import Engine, StepDurations
from cellctl.engine.recovery import read_recovery
from cellctl.engine.spc_monitor import read_spc_history
from cellctl.errors import StoreError
from cellctl.runtime.systemd import Notifier, watchdog_interval
from cellctl.schema.load import LoadedConfig
from cellctl.schema.load import warnings as config_warnings
from cellctl.store import Store
from cellctl.telemetry.publisher import OutboxPublisher
from cellctl.telemetry.recorder import Recorder

log = structlog.get_logger("cellctl.runtime")

STOP_DEADLINE_S = 10.0
"""How long a PackML Stop may take at shutdown before the engine is cancelled."""
FLUSH_DEADLINE_S = 2.0
"""How long the publisher may drain the outbox at shutdown; the rest stays in the store for next time."""


@dataclass
class Controller:
    """The running parts of one controller, for callers that drive it in-process (demo, tests)."""

    config: LoadedConfig
    store: Store
    engine: Engine
    recorder: Recorder
    drivers: Mapping[str, Driver]
    publisher: OutboxPublisher | None
    server: ControlServer
    ready: asyncio.Event = field(default_factory=asyncio.Event)


DriverFactory = Callable[[str, LoadedConfig, Clock], Driver]


def _default_driver(name: str, config: LoadedConfig, clock: Clock) -> Driver:
    return build_driver(name, config.cell.devices[name], clock, resolve_path=config.resolve)


class CellApp:
    """One controller process: store, drivers, engine, publisher and control API under one root TaskGroup."""

    def __init__(
        self,
        config: LoadedConfig,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        publish: bool | None = None,
        driver_factory: DriverFactory = _default_driver,
    ) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        self._notifier = notifier or Notifier()
        self._publish = config.cell.mqtt.enabled if publish is None else publish
        self._driver_factory = driver_factory
        self.controller: Controller | None = None
        """Set once the parts are built (before READY); None before and after a run."""
        # Drivers closing at shutdown report their links down: journaled, but not raised as alarms.
        self._stopping = False

    async def run(
        self, stop: asyncio.Event, on_ready: Callable[[Controller], Awaitable[None]] | None = None
    ) -> None:
        """Run until ``stop`` is set, then shut down in order: Stop, drivers closed, flush, store closed."""
        cell = self.config.cell
        structlog.contextvars.bind_contextvars(cell=cell.identity.cell)
        # What `cellctl check` warns about (e.g. an OPC UA device without security), once at start.
        for warning in config_warnings(self.config):
            log.warning("config warning", warning=str(warning))
        store = await Store.open(self.config.resolve(cell.store.path), synchronous=cell.store.synchronous)
        try:
            await self._run_with_store(store, stop, on_ready)
        finally:
            await store.close()

    async def _run_with_store(
        self,
        store: Store,
        stop: asyncio.Event,
        on_ready: Callable[[Controller], Awaitable[None]] | None,
    ) -> None:
        cell = self.config.cell
        # With MQTT disabled in the cell file nothing will ever drain an outbox: journal only. A run without
        # publishing (--no-mqtt, demo without a broker) still queues telemetry for a later connection.
        recorder = Recorder(store, cell.identity, telemetry=cell.mqtt.enabled)
        drivers = {name: self._driver_factory(name, self.config, self._clock) for name in cell.devices}
        samples = await store.step_durations()
        durations = StepDurations.from_samples(samples)
        log.info("step durations loaded", samples=len(samples), keys=len(durations))
        began = self._clock.monotonic()
        recovery = await read_recovery(store)
        log.info(
            "journal read for recovery",
            unclean=recovery.unclean,
            jobs=len(recovery.jobs),
            changeover=recovery.changeover.changeover_id if recovery.changeover else None,
            read_s=round(self._clock.monotonic() - began, 4),
        )
        began = self._clock.monotonic()
        charted = any(c.spc is not None for r in self.config.recipes.values() for c in r.quality.values())
        spc_history = await read_spc_history(store) if charted else ()
        log.info(
            "journal read for spc charts",
            values=len(spc_history),
            read_s=round(self._clock.monotonic() - began, 4),
        )
        engine = Engine(
            self.config,
            drivers,
            recorder,
            self._clock,
            durations=durations,
            recovery=recovery,
            spc_history=spc_history,
            orders=store,
        )

        async def journal(after_id: int, limit: int) -> list[dict[str, Any]]:
            return [dataclasses.asdict(e) for e in await store.journal(after_id=after_id, limit=limit)]

        service = ControlService(engine, identity=cell.identity, journal=journal, sink=recorder)
        publisher = None
        if self._publish:
            # Orders from the MES go through the same service as the control socket, on the same link.
            inbound = (
                [MqttOrders(service, store, cell.identity, cell.mqtt.commands, clock=self._clock)]
                if cell.mqtt.commands.enabled
                else []
            )
            publisher = OutboxPublisher(store, cell.mqtt, cell.identity, inbound=inbound)
            recorder.add_listener(publisher.notify)
        server = ControlServer(self.config.resolve(cell.api.socket), service)
        controller = Controller(self.config, store, engine, recorder, drivers, publisher, server)
        self.controller = controller

        self._stopping = False
        health_changes: asyncio.Queue[Health] = asyncio.Queue()
        unsubscribes = [driver.on_health(health_changes.put_nowait) for driver in drivers.values()]
        try:
            async with asyncio.TaskGroup() as tg:
                driver_tasks = [tg.create_task(d.run(), name=f"driver:{n}") for n, d in drivers.items()]
                health_task = tg.create_task(
                    self._record_health(health_changes, recorder, engine), name="health"
                )
                engine_task = tg.create_task(engine.run(), name="engine")
                api_task = tg.create_task(server.run(), name="api")
                publisher_task = (
                    tg.create_task(publisher.run(), name="publisher") if publisher is not None else None
                )
                status_task = tg.create_task(self._report_status(engine), name="status")

                await server.ready.wait()
                controller.ready.set()
                self._notifier.ready(self._status_line(engine))
                log.info("controller ready", socket=str(self.config.resolve(cell.api.socket)))
                if on_ready is not None:
                    await on_ready(controller)
                await stop.wait()

                # Shutdown order (DESIGN.md §5): STOPPING, PackML Stop with a deadline, API and drivers
                # closed, publisher flushed for a bounded time, then the store (closed by run()).
                self._notifier.stopping()
                self._stopping = True
                log.info("stopping")
                try:
                    await engine.shutdown(STOP_DEADLINE_S)
                except Exception as exc:  # the cell must still be brought down when Stop is refused
                    log.warning("orderly stop failed; cancelling the engine", error=str(exc))
                for task in (api_task, engine_task, status_task, *driver_tasks):
                    await _cancel(task)
                await self._drain(health_changes, recorder)
                await _cancel(health_task)
                if publisher is not None and publisher_task is not None:
                    delivered = await publisher.flush(FLUSH_DEADLINE_S)
                    log.info("publisher flushed", complete=delivered, buffered=await store.outbox_count())
                    await _cancel(publisher_task)
        finally:
            for unsubscribe in unsubscribes:
                unsubscribe()
            self.controller = None

    async def _record_health(
        self, changes: asyncio.Queue[Health], recorder: Recorder, engine: Engine
    ) -> None:
        while True:
            health = await changes.get()
            try:
                await recorder.record(_health_event(health, self._clock.wall()))
            except StoreError as exc:
                # A store that cannot record must not end this task (and the controller): the engine's
                # `store` alarm reports it; the link's own alarm below still shows what the device does.
                log.error("device health not journaled", device=health.device, error=str(exc))
            if not self._stopping:
                await health_alarm(engine, health)

    async def _drain(self, changes: asyncio.Queue[Health], recorder: Recorder) -> None:
        """Record the health changes the drivers reported while closing, so the journal shows them."""
        while not changes.empty():
            await recorder.record(_health_event(changes.get_nowait(), self._clock.wall()))

    async def _report_status(self, engine: Engine) -> None:
        interval = watchdog_interval()
        period = interval if interval is not None else 5.0
        while True:
            # Pinging from the loop itself: a blocked loop stops the pings and systemd restarts us.
            if interval is not None:
                self._notifier.watchdog()
            self._notifier.status(self._status_line(engine))
            await asyncio.sleep(period)

    @staticmethod
    def _status_line(engine: Engine) -> str:
        status = engine.status()
        job = status.current_job
        return f"state={status.state} job={job.job_id if job else '-'} queue={len(status.queue)}"


DEVICE_ALARM_PREFIX = "device:"
"""Alarm id of a device's link: this prefix and the device's name, raised while the link is down."""


async def health_alarm(engine: Engine, health: Health) -> None:
    """Raise the device's comm alarm when its link is down; clear it once it is up again (connecting, as at
    start, is neither)."""
    alarm = DEVICE_ALARM_PREFIX + health.device
    if health.state is LinkState.UP:
        await engine.alarms.clear_alarm(alarm, message=f"{health.device}: link up again")
    elif health.state is LinkState.DOWN:
        await engine.alarms.raise_alarm(
            alarm,
            severity=Severity.WARNING,
            message=f"{health.device}: link {health.state.value}: {health.error}".rstrip(": "),
            source=health.device,
        )


def _health_event(health: Health, now: float) -> DeviceHealthChanged:
    return DeviceHealthChanged(ts=now, device=health.device, state=health.state.value, error=health.error)


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel one task and wait until it has finished (its own failure, if any, reaches the TaskGroup)."""
    task.cancel()
    await asyncio.wait({task})

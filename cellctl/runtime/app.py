"""Composition root: builds the controller from a config and owns every task's lifetime and shutdown order."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from cellctl.api.mqtt_orders import MqttOrders
from cellctl.api.protocol import Role
from cellctl.api.roles import RolePolicy
from cellctl.api.server import ControlServer
from cellctl.api.service import ControlService
from cellctl.core.clock import Clock, SystemClock
from cellctl.core.events import DeviceHealthChanged, Severity
from cellctl.core.ports import Driver, Health, LinkState
from cellctl.drivers import build_driver
from cellctl.engine import Engine, StepDurations
from cellctl.engine.alarms import AlarmManager
from cellctl.engine.recovery import read_recovery
from cellctl.engine.spc_monitor import read_spc_history
from cellctl.errors import ConfigError, StoreError
from cellctl.runtime.reload import config_diff
from cellctl.runtime.systemd import Notifier, watchdog_interval
from cellctl.schema.cell import ApiConfig, CellConfig
from cellctl.schema.load import LoadedConfig, format_issues, load_config
from cellctl.schema.load import warnings as config_warnings
from cellctl.store import Store, StorePolicy
from cellctl.telemetry.encoding import Encoding
from cellctl.telemetry.publisher import BrokerLink, BrokerLinkState, OutboxPublisher
from cellctl.telemetry.recorder import Recorder
from cellctl.telemetry.sparkplug import SparkplugEncoding

log = structlog.get_logger("cellctl.runtime")

STOP_DEADLINE_S = 10.0
"""How long a PackML Stop may take at shutdown before the engine is cancelled."""
FLUSH_DEADLINE_S = 2.0
"""How long the publisher may drain the outbox at shutdown; the rest stays in the store for next time."""
POWER_UP_DEADLINE_S = 20.0
"""How long the engine may take to journal its power-up before READY; less than TimeoutStartSec."""
SHUTDOWN_MARGIN_S = 5.0
"""What the rest of a stop may take (drivers closing, the store's checkpoint and close, the interpreter's
exit): systemd's TimeoutStopSec must exceed the sum of the three."""


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
        self._reload_requested = asyncio.Event()
        self._reload_note = ""
        """Appended to the STATUS line after a reload: "reloaded" or "reload refused", with the time."""

    def request_reload(self) -> None:
        """Ask the running controller to load its configuration folder again (SIGHUP); never blocks."""
        self._reload_requested.set()

    async def run(
        self, stop: asyncio.Event, on_ready: Callable[[Controller], Awaitable[None]] | None = None
    ) -> None:
        """Run until ``stop`` is set, then shut down in order: Stop, drivers closed, flush, store closed."""
        cell = self.config.cell
        structlog.contextvars.bind_contextvars(cell=cell.identity.cell)
        # What `cellctl check` warns about (e.g. an OPC UA device without security), once at start.
        for warning in config_warnings(self.config):
            log.warning("config warning", warning=str(warning))
        store = await Store.open(
            self.config.resolve(cell.store.path), policy=StorePolicy.from_config(cell.store)
        )
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
            store_stats=lambda: store.stats().to_dict(),
        )

        async def journal(after_id: int, limit: int) -> list[dict[str, Any]]:
            return [dataclasses.asdict(e) for e in await store.journal(after_id=after_id, limit=limit)]

        # Operator actions go through the engine: a failing store raises its alarm and is retried.
        publisher: OutboxPublisher | None = None

        def link_view() -> dict[str, Any]:
            # Read only when publishing: the publisher exists by then (it needs the service first).
            return publisher.link_view() if publisher is not None else {}

        clock = self._clock
        service = ControlService(
            engine,
            identity=cell.identity,
            journal=journal,
            sink=engine,
            telemetry=link_view if self._publish else None,
            devices=lambda: device_views(cell, drivers, clock),
        )
        broker_alarm = BrokerAlarm(engine.alarms, outage_after_s=cell.mqtt.outage_alarm_s)
        if self._publish:
            # Orders from the MES go through the same service as the control socket, on the same link.
            inbound = (
                [MqttOrders(service, store, cell.identity, cell.mqtt.commands, clock=self._clock)]
                if cell.mqtt.commands.enabled
                else []
            )
            # Reads the password file and loads the TLS files now: a bad one stops the start (ConfigError).
            publisher = OutboxPublisher(
                store,
                cell.mqtt,
                cell.identity,
                encoding=self._encoding(store),
                inbound=inbound,
                resolve_path=self.config.resolve,
            )
            recorder.add_listener(publisher.notify)
            unsubscribes_link = publisher.on_link(broker_alarm.report)
        else:
            unsubscribes_link = _nothing
        server = ControlServer(
            self.config.resolve(cell.api.socket),
            service,
            group=cell.api.group,
            roles=role_policy(cell.api),
        )
        controller = Controller(self.config, store, engine, recorder, drivers, publisher, server)
        self.controller = controller

        self._stopping = False
        health_changes: asyncio.Queue[Health] = asyncio.Queue()
        unsubscribes = [driver.on_health(health_changes.put_nowait) for driver in drivers.values()]
        try:
            async with asyncio.TaskGroup() as tg:
                driver_tasks = [tg.create_task(d.run(), name=f"driver:{n}") for n, d in drivers.items()]
                health_task = tg.create_task(self._record_health(health_changes, engine), name="health")
                engine_task = tg.create_task(engine.run(), name="engine")
                api_task = tg.create_task(server.run(), name="api")
                publisher_task = (
                    tg.create_task(publisher.run(), name="publisher") if publisher is not None else None
                )
                broker_alarm_task = tg.create_task(broker_alarm.run(), name="alarm:mqtt")
                status_task = tg.create_task(self._report_status(engine, publisher), name="status")
                outbox_task = tg.create_task(watch_outbox(store, engine), name="store:outbox")
                reload_task = tg.create_task(self._watch_reloads(engine, publisher), name="reload")

                # READY: the socket listens and the cell has powered up (Stopped; after a crash with the
                # unclean_stop alarm), journal work only; the devices come up (or are reported down) after.
                await server.ready.wait()
                await engine.wait_powered_up(POWER_UP_DEADLINE_S)
                controller.ready.set()
                self._notifier.ready(self._status_line(engine, publisher))
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
                for task in (
                    reload_task,
                    api_task,
                    engine_task,
                    status_task,
                    outbox_task,
                    broker_alarm_task,
                    *driver_tasks,
                ):
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
            unsubscribes_link()
            self.controller = None

    def _encoding(self, store: Store) -> Encoding | None:
        """The wire encoding the cell file asks for (None: the publisher's default, UNS JSON)."""
        cell = self.config.cell
        if cell.mqtt.encoding != "sparkplug-b":
            return None
        characteristics = sorted({c for r in self.config.recipes.values() for c in r.quality})
        return SparkplugEncoding(
            cell.identity,
            cell.mqtt.sparkplug,
            store,
            devices=cell.devices,
            characteristics=characteristics,
        )

    async def _record_health(self, changes: asyncio.Queue[Health], engine: Engine) -> None:
        while True:
            health = await changes.get()
            try:
                # Through the engine: after its deferred facts, and a refusal raises the `store` alarm.
                await engine.record(_health_event(health, self._clock.wall()))
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

    async def _report_status(self, engine: Engine, publisher: OutboxPublisher | None) -> None:
        interval = watchdog_interval()
        period = interval if interval is not None else 5.0
        while True:
            # Pinging from the loop itself: a blocked loop stops the pings and systemd restarts us.
            if interval is not None:
                self._notifier.watchdog()
            self._notifier.status(self._status_line(engine, publisher))
            await asyncio.sleep(period)

    def _status_line(self, engine: Engine, publisher: OutboxPublisher | None) -> str:
        status = engine.status()
        job = status.current_job
        line = f"state={status.state} job={job.job_id if job else '-'} queue={len(status.queue)}"
        if publisher is not None:
            link = publisher.link
            line += f" mqtt={link.state.value if link is not None else 'connecting'}"
        return line + self._reload_note

    async def _watch_reloads(self, engine: Engine, publisher: OutboxPublisher | None) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()  # signals during a reload make one more, not one each
            await self._reload(engine)
            self._notifier.status(self._status_line(engine, publisher))

    async def _reload(self, engine: Engine) -> None:
        """Load and validate the configuration again; apply its recipes, report what needs a restart."""
        source = self.config.cell_file
        at = datetime.datetime.fromtimestamp(self._clock.wall(), datetime.UTC).strftime("%H:%M:%S")
        try:
            # Parsing YAML is file I/O and CPU: off the loop, so the watchdog pings go on meanwhile.
            new = await asyncio.to_thread(load_config, source)
        except (ConfigError, OSError) as exc:  # OSError: e.g. a file the service may not read
            problems = format_issues(exc).replace("\n", "; ") if isinstance(exc, ConfigError) else str(exc)
            log.error("reload refused; the running configuration stays", file=str(source), problems=problems)
            self._reload_note = f" | reload refused {at} UTC"
            return
        diff = config_diff(self.config, new)
        if diff.recipes_changed:
            engine.set_recipes(new.recipes)
            self.config = dataclasses.replace(self.config, recipes=new.recipes, recipe_files=new.recipe_files)
        log.info("configuration reloaded", recipes=diff.summary(), file=str(source))
        if diff.needs_restart:
            log.warning(f"needs a restart: {', '.join(diff.needs_restart)}", fields=list(diff.needs_restart))
        self._reload_note = f" | reloaded {at} UTC"


TELEMETRY_DROPPED_ALARM = "telemetry_dropped"
"""Warning raised once when the outbox dropped telemetry at its bound; cleared when it has room again."""
OUTBOX_WATCH_S = 1.0
OUTBOX_ROOM = 0.9
"""The outbox has room again below this share of both limits."""


async def watch_outbox(store: Store, engine: Engine, *, period_s: float = OUTBOX_WATCH_S) -> None:
    """Raise ``telemetry_dropped`` (a warning, once, with the count) when the store drops telemetry at the
    outbox's bound; clear it once the outbox has room again. Reads the store's in-memory figures only."""
    seen = store.stats().dropped_total  # drops of earlier runs were alarmed then
    while True:
        await asyncio.sleep(period_s)
        stats = store.stats()
        if stats.dropped_total > seen and not engine.alarms.is_active(TELEMETRY_DROPPED_ALARM):
            count = stats.dropped_total - seen
            per_stream = ", ".join(f"{k} {v}" for k, v in stats.dropped.items())
            await engine.alarms.raise_alarm(
                TELEMETRY_DROPPED_ALARM,
                severity=Severity.WARNING,
                message=(
                    f"{count} telemetry message(s) dropped at the outbox's bound (since the file was made: "
                    f"{per_stream}); the broker link is down or slow"
                ),
                source="store",
            )
            seen = stats.dropped_total
        elif (
            engine.alarms.is_active(TELEMETRY_DROPPED_ALARM)
            and stats.rows < OUTBOX_ROOM * stats.max_rows
            and stats.bytes < OUTBOX_ROOM * stats.max_bytes
        ):
            seen = stats.dropped_total
            await engine.alarms.clear_alarm(TELEMETRY_DROPPED_ALARM, message="the outbox has room again")


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


BROKER_ALARM = "mqtt"
"""Alarm id of the telemetry link: raised while the broker refuses us or the link has been down a while."""


class BrokerAlarm:
    """Turns the publisher's link reports into the ``mqtt`` alarm.

    A refusal (login or certificate) needs a person: raised at the first report. An ordinary outage is raised
    only once it has lasted ``outage_after_s`` (a drop retried within seconds is no news), saying since when;
    the records wait in the outbox meanwhile. Only the link up again clears it: a refusal followed by an
    outage stays raised as a refusal until the outage has lasted ``outage_after_s`` too.
    """

    def __init__(self, alarms: AlarmManager, *, outage_after_s: float) -> None:
        self._alarms = alarms
        self._outage_after_s = outage_after_s
        self._reports: asyncio.Queue[BrokerLink] = asyncio.Queue()
        self._raised: BrokerLinkState | None = None
        """What the active alarm says: REFUSED or DOWN (None when no alarm is active)."""
        self._down: BrokerLink | None = None
        """The first report of the outage in progress (None while up or refused)."""
        self._down_deadline: float | None = None
        """Loop time at which the outage in progress is raised."""

    def report(self, link: BrokerLink) -> None:
        """The publisher's ``on_link`` callback: queue the report (never blocks)."""
        self._reports.put_nowait(link)

    async def run(self) -> None:
        """Apply reports as they come, raising an outage once it lasted long enough; runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(self._down_deadline):
                    link = await self._reports.get()
            except TimeoutError:
                await self._raise_outage()
                continue
            await self._apply(link, loop.time())

    async def _apply(self, link: BrokerLink, now: float) -> None:
        if link.state is BrokerLinkState.UP:
            self._down = self._down_deadline = None
            await self._clear(f"telemetry link to {link.broker} up again")
        elif link.state is BrokerLinkState.REFUSED:
            self._down = self._down_deadline = None
            if self._raised is not BrokerLinkState.REFUSED:
                await self._clear(f"broker {link.broker} reachable again, but refusing")
                self._raised = BrokerLinkState.REFUSED
                retry = f"retrying about every {link.retry_s:.0f} s" if link.retry_s else "retrying"
                await self._alarms.raise_alarm(
                    BROKER_ALARM,
                    severity=Severity.WARNING,
                    message=f"MQTT broker {link.broker}: {link.reason}; {retry}; "
                    "records are kept in the outbox",
                    source="telemetry",
                )
        elif self._down is None:
            self._down = link
            if self._raised is not BrokerLinkState.DOWN:
                self._down_deadline = now + self._outage_after_s
                if self._outage_after_s <= 0:
                    await self._raise_outage()

    async def _raise_outage(self) -> None:
        down, self._down_deadline = self._down, None
        if down is None or self._raised is BrokerLinkState.DOWN:
            return
        since = datetime.datetime.fromtimestamp(down.since or down.at, datetime.UTC)
        await self._clear(f"telemetry link to {down.broker} down (no refusal seen since)")
        self._raised = BrokerLinkState.DOWN
        await self._alarms.raise_alarm(
            BROKER_ALARM,
            severity=Severity.WARNING,
            message=f"telemetry link to {down.broker} down since {since:%Y-%m-%d %H:%M:%S} UTC "
            f"({down.reason}); records are kept in the outbox",
            source="telemetry",
        )

    async def _clear(self, message: str) -> None:
        if self._raised is not None:
            self._raised = None
            await self._alarms.clear_alarm(BROKER_ALARM, message=message)


def _nothing() -> None:
    """An unsubscribe function with nothing to undo."""


def role_policy(api: ApiConfig) -> RolePolicy:
    """The control socket's roles as the cell file gives them."""
    roles = api.roles
    return RolePolicy(
        users={user: Role(role) for user, role in roles.users.items()},
        groups={group: Role(role) for group, role in roles.groups.items()},
        default=Role(roles.default),
    )


def device_views(cell: CellConfig, drivers: Mapping[str, Driver], clock: Clock) -> list[dict[str, Any]]:
    """Every configured device: link health and each tag's last reading, in file order (no I/O: the
    ``devices`` request of the control API and the TUI's Devices pane)."""
    now = clock.monotonic()
    views = []
    for name, device in cell.devices.items():
        driver = drivers[name]
        health = driver.health
        tags = []
        for tag in device.tags:
            reading = driver.last(tag)
            tags.append(
                {
                    "tag": tag,
                    "value": reading.value,
                    "quality": reading.quality.value,
                    "age_s": round(max(0.0, now - reading.timestamp), 3),
                }
            )
        views.append(
            {
                "device": name,
                "protocol": device.driver,
                "state": health.state.value,
                "state_for_s": round(max(0.0, now - health.since), 3),
                "error": health.error,
                "tags": tags,
            }
        )
    return views


def _health_event(health: Health, now: float) -> DeviceHealthChanged:
    return DeviceHealthChanged(ts=now, device=health.device, state=health.state.value, error=health.error)


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel one task and wait until it has finished (its own failure, if any, reaches the TaskGroup)."""
    task.cancel()
    await asyncio.wait({task})

"""The publisher's broker connection against private mosquittos: TLS with CA verification, client
certificates, passwords, refusals reported (and retried slowly) with records kept in the outbox, and a
silent link detected.

Certificates are made in the test (tests/fixtures/mqtt_pki.py); password files in mosquitto's own format.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from cellctl.api.client import ControlClient
from cellctl.core.clock import Clock
from cellctl.core.events import Severity, StateChanged
from cellctl.core.ports import Driver
from cellctl.drivers import SoftDriver
from cellctl.runtime.app import BROKER_ALARM, CellApp, Controller
from cellctl.schema.cell import Identity, MqttConfig
from cellctl.schema.load import LoadedConfig, load_config
from cellctl.store import Store
from cellctl.telemetry.publisher import BrokerLink, BrokerLinkState, OutboxPublisher
from cellctl.telemetry.recorder import Recorder
from cellctl.telemetry.topics import topic_root
from tests.fixtures.broker import MakeBroker, Mosquitto, collect, write_password_file
from tests.fixtures.cellfolder import cell_folder
from tests.fixtures.mqtt_pki import MqttPki, make_mqtt_pki
from tests.fixtures.tcp_proxy import TcpProxy
from tests.fixtures.telemetry import running

pytestmark = pytest.mark.broker

WAIT_S = 20.0
ROWS = 5


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> MqttPki:
    return make_mqtt_pki(tmp_path_factory.mktemp("mqtt-pki"))


def tls_lines(pki: MqttPki, *, require_certificate: bool = False) -> list[str]:
    return [
        f"cafile {pki.ca}",
        f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}",
        f"require_certificate {'true' if require_certificate else 'false'}",
    ]


class Links:
    """The publisher's link reports, with a wait for one that matches."""

    def __init__(self) -> None:
        self.reports: list[BrokerLink] = []
        self._changed = asyncio.Event()

    def __call__(self, link: BrokerLink) -> None:
        self.reports.append(link)
        self._changed.set()

    def of(self, state: BrokerLinkState) -> list[BrokerLink]:
        return [r for r in self.reports if r.state is state]

    async def wait_for(self, state: BrokerLinkState, count: int = 1, timeout: float = WAIT_S) -> BrokerLink:
        try:
            async with asyncio.timeout(timeout):
                while len(self.of(state)) < count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"no {count} x {state} report within {timeout} s: {self.reports!r}") from None
        return self.of(state)[count - 1]


def publisher_for(
    store: Store, identity: Identity, broker: Mosquitto | TcpProxy, **mqtt: object
) -> tuple[OutboxPublisher, Links]:
    config = MqttConfig.model_validate(
        {"host": broker.host, "port": broker.port, "keepalive_s": 2, "refused_backoff_s": 1, **mqtt}
    )
    publisher = OutboxPublisher(store, config, identity, backoff_base_s=0.05, backoff_cap_s=0.2)
    links = Links()
    publisher.on_link(links)
    return publisher, links


async def record_rows(
    store: Store, identity: Identity, publisher: OutboxPublisher, count: int = ROWS
) -> None:
    recorder = Recorder(store, identity)
    recorder.add_listener(publisher.notify)
    for i in range(count):
        await recorder.record(
            StateChanged(ts=1000.0 + i, state=f"S{i}", state_no=i, previous="x", command=None, by="test")
        )


def client_context(pki: MqttPki) -> ssl.SSLContext:
    """The test subscriber's own TLS context (with the client certificate, for brokers that require it)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


def has(count: int, topic: str) -> Callable[[list[object]], bool]:
    return lambda messages: sum(1 for m in messages if getattr(m, "topic", None) == topic) >= count


# --- TLS -------------------------------------------------------------------------------------------------


async def test_tls_with_the_right_ca_delivers_every_row(
    make_broker: MakeBroker, pki: MqttPki, store: Store, identity: Identity
) -> None:
    broker = make_broker(tls_lines(pki))
    broker.start()
    publisher, links = publisher_for(store, identity, broker, tls={"ca_file": str(pki.ca)})
    topic = f"{topic_root(identity)}/state"

    async with (
        collect(broker.host, broker.port, topic, tls_context=client_context(pki)) as c,
        running(publisher),
    ):
        await record_rows(store, identity, publisher)
        await c.wait_until(has(ROWS, topic), timeout=WAIT_S)
        drained = await publisher.flush(WAIT_S)

    assert drained
    assert await store.outbox_count() == 0
    assert links.reports[0].state is BrokerLinkState.UP


async def test_tls_checks_the_configured_server_name_instead_of_the_host(
    make_broker: MakeBroker, pki: MqttPki, store: Store, identity: Identity
) -> None:
    broker = make_broker(tls_lines(pki))
    broker.start()
    # The certificate names localhost and 127.0.0.1, not "broker.plant.example".
    publisher, links = publisher_for(
        store, identity, broker, tls={"ca_file": str(pki.ca), "server_name": "broker.plant.example"}
    )

    async with running(publisher):
        refused = await links.wait_for(BrokerLinkState.REFUSED)

    assert "certificate" in refused.reason
    assert "broker.plant.example" in refused.reason
    assert links.of(BrokerLinkState.UP) == []


async def test_a_broker_certificate_from_another_ca_is_refused_and_rows_stay_in_the_outbox(
    make_broker: MakeBroker, pki: MqttPki, store: Store, identity: Identity
) -> None:
    broker = make_broker(tls_lines(pki))
    broker.start()
    publisher, links = publisher_for(store, identity, broker, tls={"ca_file": str(pki.wrong_ca)})
    topic = f"{topic_root(identity)}/state"

    async with (
        collect(broker.host, broker.port, topic, tls_context=client_context(pki)) as c,
        running(publisher),
    ):
        await record_rows(store, identity, publisher)
        refused = await links.wait_for(BrokerLinkState.REFUSED)
        still_queued = await store.outbox_count()

    assert refused.reason.startswith("the broker's certificate failed verification: ")
    assert publisher.last_error == refused.reason
    assert still_queued == ROWS
    assert publisher.delivered == 0
    assert c.on(topic) == []


async def test_a_broker_requiring_a_client_certificate_takes_ours(
    make_broker: MakeBroker, pki: MqttPki, store: Store, identity: Identity
) -> None:
    broker = make_broker(tls_lines(pki, require_certificate=True))
    broker.start()
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    publisher, links = publisher_for(store, identity, broker, tls=tls)

    async with running(publisher):
        await record_rows(store, identity, publisher)
        drained = await publisher.flush(WAIT_S)

    assert drained
    assert publisher.delivered == ROWS
    assert [r.state for r in links.reports][:1] == [BrokerLinkState.UP]


async def test_a_broker_requiring_a_client_certificate_refuses_a_client_without_one(
    make_broker: MakeBroker, pki: MqttPki, store: Store, identity: Identity
) -> None:
    broker = make_broker(tls_lines(pki, require_certificate=True))
    broker.start()
    publisher, links = publisher_for(store, identity, broker, tls={"ca_file": str(pki.ca)})

    async with running(publisher):
        await record_rows(store, identity, publisher)
        refused = await links.wait_for(BrokerLinkState.REFUSED)
        still_queued = await store.outbox_count()

    assert refused.reason == (
        "the broker refused the TLS session: it requires a client certificate (mqtt.tls.cert_file, "
        "key_file) (TLSV13_ALERT_CERTIFICATE_REQUIRED)"
    )
    assert still_queued == ROWS
    assert links.of(BrokerLinkState.UP) == []


async def test_a_broker_refuses_a_client_certificate_its_ca_did_not_sign(
    make_broker: MakeBroker, pki: MqttPki, store: Store, identity: Identity
) -> None:
    broker = make_broker(tls_lines(pki, require_certificate=True))
    broker.start()
    tls = {"ca_file": str(pki.ca), "cert_file": str(pki.stranger_cert), "key_file": str(pki.stranger_key)}
    publisher, links = publisher_for(store, identity, broker, tls=tls)

    async with running(publisher):
        refused = await links.wait_for(BrokerLinkState.REFUSED)

    assert refused.reason == (
        "the broker refused the TLS session: it does not trust the CA of cellctl's client certificate "
        "(TLSV1_ALERT_UNKNOWN_CA)"
    )
    assert links.of(BrokerLinkState.UP) == []


# --- passwords -------------------------------------------------------------------------------------------


async def test_the_right_password_from_a_password_file_delivers(
    make_broker: MakeBroker, store: Store, identity: Identity, tmp_path: Path
) -> None:
    broker = make_broker(allow_anonymous=False)
    broker.configure(
        [f"password_file {write_password_file(broker.folder / 'passwd', {'cell': 's3cret'})}"],
        allow_anonymous=False,
    )
    broker.start()
    secret = tmp_path / "mqtt.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    publisher, links = publisher_for(store, identity, broker, username="cell", password_file=str(secret))

    async with running(publisher):
        await record_rows(store, identity, publisher)
        drained = await publisher.flush(WAIT_S)

    assert drained
    assert publisher.delivered == ROWS
    assert links.reports[0].state is BrokerLinkState.UP


async def test_a_wrong_password_is_refused_retried_slowly_and_delivered_once_the_broker_takes_it(
    make_broker: MakeBroker, store: Store, identity: Identity
) -> None:
    broker = make_broker(allow_anonymous=False)
    passwd = broker.folder / "passwd"
    broker.configure(
        [f"password_file {write_password_file(passwd, {'cell': 'other'})}"], allow_anonymous=False
    )
    broker.start()
    publisher, links = publisher_for(store, identity, broker, username="cell", password="s3cret")

    async with running(publisher):
        await record_rows(store, identity, publisher)
        await links.wait_for(BrokerLinkState.REFUSED, count=3)
        queued_while_refused = await store.outbox_count()
        # The fix on the broker's side: the password it knows for "cell" becomes the one the cell sends.
        write_password_file(passwd, {"cell": "s3cret"})
        await broker.astop()
        await broker.astart()
        await links.wait_for(BrokerLinkState.UP)
        drained = await publisher.flush(WAIT_S)

    refused = links.of(BrokerLinkState.REFUSED)
    assert all(r.reason.startswith("the broker refused the login: ") for r in refused[:3])
    assert all("authori" in r.reason.lower() for r in refused[:3])
    assert [r.attempt for r in refused[:3]] == [1, 2, 3]
    # Slow: every retry waits about refused_backoff_s (1 s here, at least 0.75 s), far above the 0.2 s cap
    # of an ordinary outage; the reports' timestamps show it.
    assert all(0.75 <= (r.retry_s or 0) <= 1.0 for r in refused)
    gaps = [b.at - a.at for a, b in itertools.pairwise(refused)]
    assert gaps and all(gap >= 0.7 for gap in gaps)
    assert queued_while_refused == ROWS
    assert drained
    assert publisher.delivered == ROWS
    assert links.reports[-1].state is BrokerLinkState.UP


async def test_an_ordinary_outage_is_reported_down_and_retried_fast(
    make_broker: MakeBroker, store: Store, identity: Identity
) -> None:
    broker = make_broker()  # never started: connections are refused at the TCP level
    publisher, links = publisher_for(store, identity, broker)

    async with running(publisher):
        third = await links.wait_for(BrokerLinkState.DOWN, count=3)

    assert links.of(BrokerLinkState.REFUSED) == []
    assert third.attempt == 3
    assert all((r.retry_s or 1.0) <= 0.2 for r in links.of(BrokerLinkState.DOWN))


# --- a silent link ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("keepalive_s", [1, 2])
async def test_a_silent_link_is_detected_within_twice_the_keepalive(
    make_broker: MakeBroker, store: Store, identity: Identity, keepalive_s: int
) -> None:
    broker = make_broker()
    broker.start()
    async with TcpProxy(broker.host, broker.port) as proxy:
        publisher, links = publisher_for(store, identity, proxy, keepalive_s=keepalive_s)
        async with running(publisher):
            await links.wait_for(BrokerLinkState.UP)
            await record_rows(store, identity, publisher, count=1)
            assert await publisher.flush(WAIT_S)
            loop = asyncio.get_running_loop()
            frozen_at = loop.time()
            proxy.freeze()
            await links.wait_for(BrokerLinkState.DOWN, timeout=4 * keepalive_s + 2)
            detected_s = loop.time() - frozen_at
            proxy.thaw()

    # The publisher's probe sees it within 1.5 x keepalive (measured: 1.47-1.50 s and 2.96-3.02 s).
    assert detected_s <= 2 * keepalive_s, detected_s


# --- the controller's mqtt alarm -------------------------------------------------------------------------


def soft(name: str, config: LoadedConfig, clock: Clock) -> Driver:
    return SoftDriver(name, config.cell.devices[name].tags, clock=clock)


async def until(changed: asyncio.Event, condition: Callable[[], bool], timeout: float = WAIT_S) -> None:
    """Wait until ``condition()`` holds, looking again whenever the controller records something."""
    async with asyncio.timeout(timeout):
        while not condition():
            changed.clear()
            await changed.wait()


async def api_status_telemetry(controller: Controller) -> dict[str, Any]:
    """The ``telemetry`` entry of the status a client gets over the control socket."""
    async with ControlClient(controller.config.resolve(controller.config.cell.api.socket)) as client:
        status = await client.request("status")
    telemetry: dict[str, Any] = status["telemetry"]
    return telemetry


def controller_for(folder: Path, broker: Mosquitto, **mqtt: object) -> CellApp:
    """The example cell in ``folder`` (soft drivers) publishing to ``broker`` with these ``mqtt`` keys."""
    cell_folder(folder)
    yaml = YAML()
    data: Any = yaml.load((folder / "cell.yaml").read_text())
    data["mqtt"] = {
        "host": broker.host,
        "port": broker.port,
        "keepalive_s": 2,
        "refused_backoff_s": 1,
        **mqtt,
    }
    with (folder / "cell.yaml").open("w") as fh:
        yaml.dump(data, fh)
    return CellApp(load_config(folder), driver_factory=soft)


async def test_the_controller_shows_the_mqtt_alarm_while_its_login_is_refused_and_clears_it_once_taken(
    make_broker: MakeBroker, tmp_path: Path
) -> None:
    broker = make_broker(allow_anonymous=False)
    passwd = write_password_file(broker.folder / "passwd", {"cell": "other"})
    broker.configure([f"password_file {passwd}"], allow_anonymous=False)
    broker.start()
    (tmp_path / "mqtt.password").write_text("s3cret\n")
    (tmp_path / "mqtt.password").chmod(0o600)
    app = controller_for(tmp_path, broker, username="cell", password_file="mqtt.password")
    stop = asyncio.Event()
    seen: dict[str, Any] = {}

    async def scenario(controller: Controller) -> None:
        alarms = controller.engine.alarms
        changed = asyncio.Event()
        controller.recorder.add_listener(changed.set)
        try:
            await until(changed, lambda: alarms.is_active(BROKER_ALARM))
            seen["shown"] = controller.engine.status().alarms
            seen["telemetry_refused"] = await api_status_telemetry(controller)
            seen["queued"] = await controller.store.outbox_count()
            write_password_file(passwd, {"cell": "s3cret"})
            await broker.astop()
            await broker.astart()
            await until(changed, lambda: not alarms.is_active(BROKER_ALARM))
            assert controller.publisher is not None
            seen["drained"] = await controller.publisher.flush(WAIT_S)
            seen["telemetry_up"] = await api_status_telemetry(controller)
        finally:
            stop.set()

    async with asyncio.timeout(60):
        await app.run(stop, on_ready=scenario)

    assert seen["telemetry_refused"]["state"] == "refused"
    assert seen["telemetry_refused"]["reason"].startswith("the broker refused the login")
    assert seen["telemetry_up"]["state"] == "up"
    assert seen["telemetry_up"]["reason"] == ""
    (shown,) = [a for a in seen["shown"] if a.id == BROKER_ALARM]
    assert shown.severity is Severity.WARNING
    expected = f"MQTT broker {broker.host}:{broker.port}: the broker refused the login: "
    assert shown.message.startswith(expected)
    assert seen["queued"] > 0  # the controller's own records (start-up, the alarm) wait in the outbox
    assert seen["drained"]


async def test_the_controller_raises_the_mqtt_alarm_for_a_broker_certificate_it_cannot_verify(
    make_broker: MakeBroker, pki: MqttPki, tmp_path: Path
) -> None:
    broker = make_broker(tls_lines(pki))
    broker.start()
    app = controller_for(tmp_path, broker, tls={"ca_file": str(pki.wrong_ca)})
    stop = asyncio.Event()
    seen: dict[str, Any] = {}

    async def scenario(controller: Controller) -> None:
        changed = asyncio.Event()
        controller.recorder.add_listener(changed.set)
        try:
            await until(changed, lambda: controller.engine.alarms.is_active(BROKER_ALARM))
            seen["alarm"] = controller.engine.alarms.get(BROKER_ALARM)
            seen["queued"] = await controller.store.outbox_count()
            assert controller.publisher is not None
            seen["delivered"] = controller.publisher.delivered
        finally:
            stop.set()

    async with asyncio.timeout(60):
        await app.run(stop, on_ready=scenario)

    assert ": the broker's certificate failed verification: " in seen["alarm"].message
    assert seen["queued"] > 0
    assert seen["delivered"] == 0

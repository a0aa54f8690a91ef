"""The broker connection in the cell file (TLS, password file, keepalive), what `cellctl check` warns about,
what the publisher refuses at start, and how the runtime turns link reports into the ``mqtt`` alarm."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from ruamel.yaml import YAML

from cellctl.cli.ctl import format_status
from cellctl.core.clock import SystemClock
from cellctl.core.events import AlarmAction, AlarmEvent, Event, Severity
from cellctl.engine.alarms import AlarmManager
from cellctl.errors import ConfigError
from cellctl.runtime.app import BROKER_ALARM, BrokerAlarm
from cellctl.schema.cell import Identity, MqttConfig
from cellctl.schema.load import load_config, warnings
from cellctl.store import Store
from cellctl.telemetry.publisher import BrokerLink, BrokerLinkState, OutboxPublisher
from tests.fixtures.cellfolder import cell_folder

IDENTITY = Identity(enterprise="acme", site="s", area="a", line="l", cell="c")
BROKER = "broker.plant.example:8883"


def cell_with_mqtt(folder: Path, mqtt: dict[str, Any]) -> Path:
    """The example cell in ``folder`` with this ``mqtt`` block; the folder."""
    cell_folder(folder)
    yaml = YAML()
    data: Any = yaml.load((folder / "cell.yaml").read_text())
    data["mqtt"] = mqtt
    with (folder / "cell.yaml").open("w") as fh:
        yaml.dump(data, fh)
    return folder


def secret_file(folder: Path, mode: int, text: str = "s3cret\n") -> Path:
    path = folder / "mqtt.password"
    path.write_text(text)
    path.chmod(mode)
    return path


def issues_of(folder: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(folder)
    return [str(issue) for issue in caught.value.issues]


# --- the model -------------------------------------------------------------------------------------------


def test_keepalive_defaults_to_10_s_and_more_is_refused() -> None:
    assert MqttConfig().keepalive_s == 10
    with pytest.raises(ValidationError, match="less than or equal to 10"):
        MqttConfig(keepalive_s=11)


def test_the_default_port_stays_1883() -> None:
    assert MqttConfig().port == 1883


@pytest.mark.parametrize(
    ("mqtt", "message"),
    [
        ({"username": "u", "password": "p", "password_file": "f"}, "password or password_file, not both"),
        ({"password": "p"}, "a password needs a username"),
        ({"tls": {"cert_file": "c.pem"}}, "needs both cert_file and key_file"),
        ({"tls": {"key_password": "x"}}, "key_password without key_file"),
        ({"tls": {"verify": False}}, "Extra inputs are not permitted"),
        ({"tls": {"insecure": True}}, "Extra inputs are not permitted"),
    ],
)
def test_a_contradictory_or_unverified_broker_block_is_refused(mqtt: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MqttConfig.model_validate(mqtt)


# --- files named by the cell file --------------------------------------------------------------------------


def test_a_password_file_everyone_can_read_is_refused_at_load(tmp_path: Path) -> None:
    secret_file(tmp_path, 0o644)
    folder = cell_with_mqtt(tmp_path, {"username": "cell", "password_file": "mqtt.password"})

    (issue,) = issues_of(folder)

    assert "mqtt.password_file: password file" in issue
    assert "can be read by everyone (mode 644): chmod 600 or 640 it" in issue


def test_missing_tls_files_and_password_file_are_errors_at_their_keys(tmp_path: Path) -> None:
    folder = cell_with_mqtt(
        tmp_path,
        {
            "username": "cell",
            "password_file": "nothere.txt",
            "tls": {"ca_file": "pki/ca.pem", "cert_file": "pki/c.pem", "key_file": "pki/c.key"},
        },
    )

    found = issues_of(folder)

    assert any("mqtt.tls.ca_file: ca file" in i and "pki/ca.pem does not exist" in i for i in found)
    assert any("mqtt.tls.cert_file: cert file" in i for i in found)
    assert any("mqtt.tls.key_file: key file" in i for i in found)
    assert any("mqtt.password_file: password file" in i and "does not exist" in i for i in found)


def test_an_inline_password_is_warned_about_and_so_is_a_password_without_tls(tmp_path: Path) -> None:
    folder = cell_with_mqtt(tmp_path, {"username": "cell", "password": "s3cret"})

    found = [str(w) for w in warnings(load_config(folder)) if ": mqtt." in str(w)]

    assert len(found) == 2
    assert "mqtt.password: the broker password is written in the cell file" in found[0]
    assert "mqtt.password: the broker password is sent without encryption" in found[1]


def test_telemetry_to_a_remote_broker_without_tls_is_warned_about(tmp_path: Path) -> None:
    folder = cell_with_mqtt(tmp_path, {"host": "broker.plant.example"})

    (warning,) = [str(w) for w in warnings(load_config(folder)) if ": mqtt." in str(w)]

    assert "mqtt.host: telemetry goes to broker.plant.example without TLS" in warning


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.1.1"])
def test_telemetry_to_a_broker_on_this_machine_without_tls_is_not_warned_about(
    tmp_path: Path, host: str
) -> None:
    folder = cell_with_mqtt(tmp_path, {"host": host})

    assert [str(w) for w in warnings(load_config(folder)) if ": mqtt." in str(w)] == []


def test_a_password_file_over_tls_is_not_warned_about(tmp_path: Path) -> None:
    secret_file(tmp_path, 0o600)
    (tmp_path / "ca.pem").write_text("not checked at load\n")
    folder = cell_with_mqtt(
        tmp_path, {"username": "cell", "password_file": "mqtt.password", "tls": {"ca_file": "ca.pem"}}
    )

    assert [str(w) for w in warnings(load_config(folder)) if ": mqtt." in str(w)] == []


# --- the publisher at start --------------------------------------------------------------------------------


async def test_the_publisher_refuses_to_start_with_a_password_file_others_can_read(tmp_path: Path) -> None:
    secret_file(tmp_path, 0o604)
    mqtt = MqttConfig(username="cell", password_file="mqtt.password")
    store = await Store.open(tmp_path / "c.db")
    try:
        with pytest.raises(ConfigError, match=r"mqtt\.password_file: .*can be read by everyone"):
            OutboxPublisher(store, mqtt, IDENTITY, resolve_path=lambda p: tmp_path / p)
    finally:
        await store.close()


async def test_the_publisher_refuses_to_start_with_a_ca_file_that_is_no_certificate(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("garbage\n")
    mqtt = MqttConfig.model_validate({"tls": {"ca_file": "ca.pem"}})
    store = await Store.open(tmp_path / "c.db")
    try:
        with pytest.raises(ConfigError, match=r"mqtt\.tls\.ca_file: cannot load the CA"):
            OutboxPublisher(store, mqtt, IDENTITY, resolve_path=lambda p: tmp_path / p)
    finally:
        await store.close()


# --- the mqtt alarm ----------------------------------------------------------------------------------------


class Journal:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.changed = asyncio.Event()

    async def record(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()

    def actions(self) -> list[tuple[AlarmAction, str]]:
        return [
            (e.action, e.message)
            for e in self.events
            if isinstance(e, AlarmEvent) and e.alarm == BROKER_ALARM
        ]

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.actions()) < count:
                self.changed.clear()
                await self.changed.wait()


def link(state: BrokerLinkState, reason: str = "", at: float = 1_800_000_000.0) -> BrokerLink:
    retry = None if state is BrokerLinkState.UP else 30.0
    return BrokerLink(state, BROKER, at, reason, attempt=0 if retry is None else 1, retry_s=retry)


@contextlib.asynccontextmanager
async def alarm_running(outage_after_s: float) -> AsyncIterator[tuple[Journal, AlarmManager, BrokerAlarm]]:
    """A BrokerAlarm over an alarm manager journaling into a Journal, its task running for the block."""
    journal = Journal()
    manager = AlarmManager(journal.record, SystemClock())
    alarm = BrokerAlarm(manager, outage_after_s=outage_after_s)
    task = asyncio.create_task(alarm.run(), name="test:alarm:mqtt")
    try:
        yield journal, manager, alarm
    finally:
        task.cancel()
        await asyncio.wait({task})


async def test_a_refused_login_raises_the_mqtt_alarm_at_once_and_the_link_up_clears_it() -> None:
    async with alarm_running(3600) as (journal, manager, alarm):
        alarm.report(link(BrokerLinkState.REFUSED, "the broker refused the login: Not authorized"))
        alarm.report(link(BrokerLinkState.REFUSED, "the broker refused the login: Not authorized"))
        await journal.wait_for(1)
        shown = manager.shown()
        alarm.report(link(BrokerLinkState.UP))
        await journal.wait_for(2)

    assert [(a.id, a.severity, a.source) for a in shown] == [(BROKER_ALARM, Severity.WARNING, "telemetry")]
    assert shown[0].message == (
        f"MQTT broker {BROKER}: the broker refused the login: Not authorized; retrying about every 30 s; "
        "records are kept in the outbox"
    )
    assert [action for action, _ in journal.actions()] == [AlarmAction.RAISED, AlarmAction.CLEARED]
    assert journal.actions()[1][1] == f"telemetry link to {BROKER} up again"


async def test_an_outage_raises_the_alarm_only_once_it_lasted_long_enough_saying_since_when() -> None:
    async with alarm_running(0.05) as (journal, manager, alarm):
        alarm.report(link(BrokerLinkState.DOWN, "MqttError: Connection refused", at=1_800_000_000.0))
        alarm.report(link(BrokerLinkState.DOWN, "MqttError: Connection refused", at=1_800_000_001.0))
        await journal.wait_for(1)
        shown = manager.shown()

    assert [a.message for a in shown] == [
        f"telemetry link to {BROKER} down since 2027-01-15 08:00:00 UTC (MqttError: Connection refused); "
        "records are kept in the outbox"
    ]
    assert len(journal.actions()) == 1


async def test_an_outage_shorter_than_the_grace_raises_nothing() -> None:
    async with alarm_running(3600) as (journal, _manager, alarm):
        alarm.report(link(BrokerLinkState.DOWN, "MqttError: session ended"))
        alarm.report(link(BrokerLinkState.UP))
        # A refusal after that still raises at once: the queue is worked in order, so it proves the rest ran.
        alarm.report(
            link(BrokerLinkState.REFUSED, "the broker's certificate failed verification: unknown CA")
        )
        await journal.wait_for(1)

    ((action, message),) = journal.actions()
    assert action is AlarmAction.RAISED
    assert "certificate failed verification" in message


# --- the status ------------------------------------------------------------------------------------------


def test_ctl_status_shows_the_broker_link_with_since_when_and_why() -> None:
    refused = BrokerLink(
        BrokerLinkState.REFUSED,
        BROKER,
        at=1_800_000_060.0,
        reason="the broker refused the login: Not authorized",
        attempt=3,
        retry_s=28.0,
        since=1_800_000_000.0,
    )

    text = format_status({"state": "Idle", "state_no": 4, "telemetry": refused.to_dict()})

    assert (
        f"telemetry  refused ({BROKER}) since 2027-01-15 08:00:00.000Z: "
        "the broker refused the login: Not authorized" in text
    )


async def test_a_refusal_stays_raised_through_a_short_outage_until_the_link_is_up() -> None:
    async with alarm_running(3600) as (journal, _manager, alarm):
        alarm.report(link(BrokerLinkState.REFUSED, "the broker refused the login: Not authorized"))
        alarm.report(link(BrokerLinkState.DOWN, "MqttError: Connection refused"))
        alarm.report(link(BrokerLinkState.UP))
        await journal.wait_for(2)

    assert [action for action, _ in journal.actions()] == [AlarmAction.RAISED, AlarmAction.CLEARED]
    assert journal.actions()[1][1] == f"telemetry link to {BROKER} up again"


async def test_a_refusal_followed_by_a_long_outage_becomes_the_outage_alarm() -> None:
    async with alarm_running(0.05) as (journal, manager, alarm):
        alarm.report(link(BrokerLinkState.REFUSED, "the broker refused the login: Not authorized"))
        alarm.report(link(BrokerLinkState.DOWN, "MqttError: Connection refused"))
        await journal.wait_for(3)
        shown = manager.shown()

    assert [action for action, _ in journal.actions()] == [
        AlarmAction.RAISED,
        AlarmAction.CLEARED,
        AlarmAction.RAISED,
    ]
    assert [a.message.split(" since ")[0] for a in shown if a.active] == [f"telemetry link to {BROKER} down"]

"""OPC UA security of the driver against a secured simulated robot: every policy with Sign and SignAndEncrypt,
the server certificate checked against the trust folder, users and passwords, and what the server does not
offer. Certificates are made once per module with asyncua's helpers."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from cellctl.core.clock import SystemClock
from cellctl.core.ports import Health, LinkState
from cellctl.core.tags import Quality, Tag
from cellctl.drivers import Backoff, OpcUaDriver
from cellctl.schema.cell import CellConfig, DeviceConfig, OpcUaSecurity
from device_sims.behaviour import World, build_world
from device_sims.harness import free_port, load_cell_config
from device_sims.opcua_robot import SECURE_POLICIES, OpcUaDeviceServer, SimSecurity
from device_sims.sims_config import SimsConfig
from tests.fixtures.opcua_pki import Pki, make_pki
from tests.integration.test_opcua_driver import running, wait_health

CONFIG = Path(__file__).resolve().parents[2] / "config"
USER, PASSWORD = "cellctl", "s3cret"

POLICY_MODES = [
    (policy, mode)
    for policy in ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
    for mode in ("Sign", "SignAndEncrypt")
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cell() -> CellConfig:
    return load_cell_config(CONFIG)


@asynccontextmanager
async def secured_robot(
    cell: CellConfig,
    pki: Pki,
    *,
    policies: tuple[str, ...] = SECURE_POLICIES,
    users: dict[str, str] | None = None,
) -> AsyncIterator[tuple[OpcUaDeviceServer, World]]:
    """The example cell's robot simulated behind a secured OPC UA server on a free port."""
    world = build_world([("robot1", cell.devices["robot1"])], SimsConfig(), time_scale=0.02)
    security = SimSecurity(pki.server_certificate, pki.server_key, policies, users or {USER: PASSWORD})
    server = OpcUaDeviceServer(world.devices["robot1"], "127.0.0.1", free_port(), security=security)
    try:
        await server.start()
        yield server, world
    finally:
        await server.aclose()
        await world.aclose()


def robot_config(cell: CellConfig, server: OpcUaDeviceServer, pki: Pki, **security: Any) -> DeviceConfig:
    """The example robot pointed at ``server``, secured with the test certificates (overridden by
    ``security``)."""
    block = {
        "policy": "Basic256Sha256",
        "mode": "SignAndEncrypt",
        "certificate": str(pki.client_certificate),
        "private_key": str(pki.client_key),
        "trust_dir": str(pki.trusted),
        "username": USER,
        "password": PASSWORD,
        **security,
    }
    return cell.devices["robot1"].model_copy(
        update={"endpoint": server.endpoint, "security": OpcUaSecurity.model_validate(block)}
    )


class CountingBackoff(Backoff):
    """A short backoff that counts failed connects, so a test can wait for several of them."""

    def __init__(self) -> None:
        super().__init__(start=0.02, cap=0.05)
        self.failures = 0
        self._changed = asyncio.Event()

    def next_delay(self) -> float:
        self.failures += 1
        self._changed.set()
        return super().next_delay()

    async def wait_failures(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.failures < count:
                self._changed.clear()
                await self._changed.wait()


def recording(driver: OpcUaDriver) -> list[Health]:
    """Every health change of ``driver`` from now on."""
    changes: list[Health] = []
    driver.on_health(changes.append)
    return changes


async def stays_down(driver: OpcUaDriver, backoff: CountingBackoff, matches: Callable[[str], bool]) -> Health:
    """Run ``driver`` through three failed connects; it must never come UP and its error must match."""
    changes = recording(driver)
    async with running(driver):
        await backoff.wait_failures(3, 10)
        health = driver.health
    assert all(h.state is not LinkState.UP for h in changes), changes
    assert health.state is LinkState.DOWN
    assert matches(health.error), health.error
    return health


# ------------------------------------------------------------------------------------------ policies


@pytest.mark.parametrize(("policy", "mode"), POLICY_MODES)
async def test_each_policy_and_mode_connects_reads_and_writes(
    cell: CellConfig, pki: Pki, policy: str, mode: str
) -> None:
    async with secured_robot(cell, pki) as (server, world):
        driver = OpcUaDriver(
            "robot1", robot_config(cell, server, pki, policy=policy, mode=mode), SystemClock()
        )
        async with running(driver):
            await wait_health(driver, LinkState.UP, 5)
            readings = {tag: driver.last(tag) for tag in driver.config.tags}
            await driver.write("program", 3)
            await Tag(driver, "active_program").wait_for_value(3, 5)
        for tag, reading in readings.items():
            assert reading.quality is Quality.GOOD, (tag, reading)
        assert world.commands[("robot1", "program_load")] == 1


# ------------------------------------------------------------------------------- server certificate


async def test_a_server_certificate_not_in_the_trust_folder_is_refused_and_the_device_stays_down(
    cell: CellConfig, pki: Pki
) -> None:
    async with secured_robot(cell, pki) as (server, _world):
        backoff = CountingBackoff()
        config = robot_config(cell, server, pki, trust_dir=str(pki.other))
        driver = OpcUaDriver("robot1", config, SystemClock(), backoff=backoff)
        health = await stays_down(driver, backoff, lambda e: "BadCertificateUntrusted" in e)
    assert health.error.startswith("robot1: server certificate ")
    assert pki.server_subject in health.error
    assert str(pki.other) in health.error
    assert all(driver.last(tag).quality is Quality.BAD for tag in driver.config.tags)


async def test_a_server_certificate_copied_into_the_trust_folder_is_trusted_at_the_next_connect(
    cell: CellConfig, pki: Pki, tmp_path: Path
) -> None:
    trust = tmp_path / "trust"
    shutil.copytree(pki.other, trust)
    async with secured_robot(cell, pki) as (server, _world):
        backoff = CountingBackoff()
        driver = OpcUaDriver(
            "robot1", robot_config(cell, server, pki, trust_dir=str(trust)), SystemClock(), backoff=backoff
        )
        async with running(driver):
            await backoff.wait_failures(1, 5)
            assert driver.health.state is LinkState.DOWN
            shutil.copy(pki.server_certificate, trust / "robot1.der")
            await wait_health(driver, LinkState.UP, 5)


async def test_an_empty_trust_folder_refuses_every_server(cell: CellConfig, pki: Pki, tmp_path: Path) -> None:
    async with secured_robot(cell, pki) as (server, _world):
        backoff = CountingBackoff()
        config = robot_config(cell, server, pki, trust_dir=str(tmp_path))
        driver = OpcUaDriver("robot1", config, SystemClock(), backoff=backoff)
        health = await stays_down(driver, backoff, lambda e: "holds no certificate" in e)
    assert str(tmp_path) in health.error


# ------------------------------------------------------------------------------------------- users


async def test_a_wrong_password_is_refused_naming_the_user(cell: CellConfig, pki: Pki) -> None:
    async with secured_robot(cell, pki) as (server, _world):
        backoff = CountingBackoff()
        config = robot_config(cell, server, pki, password="wrong")
        driver = OpcUaDriver("robot1", config, SystemClock(), backoff=backoff)
        health = await stays_down(driver, backoff, lambda e: "BadUserAccessDenied" in e)
    assert "robot1: the server refused user 'cellctl'" in health.error


async def test_no_credentials_where_the_server_wants_a_user_is_refused(cell: CellConfig, pki: Pki) -> None:
    async with secured_robot(cell, pki) as (server, _world):
        backoff = CountingBackoff()
        config = robot_config(cell, server, pki, username=None, password=None)
        driver = OpcUaDriver("robot1", config, SystemClock(), backoff=backoff)
        health = await stays_down(driver, backoff, lambda e: "refused anonymous access" in e)
    assert "configure a username and password" in health.error


# ------------------------------------------------------------------------------ what is not offered


async def test_a_mode_the_server_does_not_offer_is_refused_listing_what_it_offers(
    cell: CellConfig, pki: Pki
) -> None:
    async with secured_robot(cell, pki, policies=("Basic256Sha256_SignAndEncrypt",)) as (server, _world):
        backoff = CountingBackoff()
        config = robot_config(cell, server, pki, mode="Sign")
        driver = OpcUaDriver("robot1", config, SystemClock(), backoff=backoff)
        health = await stays_down(driver, backoff, lambda e: "no endpoint with Basic256Sha256/Sign" in e)
    assert "it offers: Basic256Sha256/SignAndEncrypt" in health.error


async def test_security_none_against_a_server_without_it_is_refused(cell: CellConfig, pki: Pki) -> None:
    async with secured_robot(cell, pki) as (server, _world):
        backoff = CountingBackoff()
        config = cell.devices["robot1"].model_copy(update={"endpoint": server.endpoint})
        driver = OpcUaDriver("robot1", config, SystemClock(), backoff=backoff)
        health = await stays_down(driver, backoff, lambda e: "no endpoint with None/None" in e)
    assert "it offers: Aes128_Sha256_RsaOaep/Sign, " in health.error


async def test_certificate_paths_are_taken_from_the_cell_files_folder(cell: CellConfig, pki: Pki) -> None:
    async with secured_robot(cell, pki) as (server, _world):
        config = robot_config(
            cell,
            server,
            pki,
            certificate="client.der",
            private_key="client.pem",
            trust_dir="trusted",
        )
        driver = OpcUaDriver("robot1", config, SystemClock(), resolve_path=lambda p: pki.folder / p)
        async with running(driver):
            await wait_health(driver, LinkState.UP, 5)

"""The simulated method-style robot (config/examples/method-robot), spoken to with a raw asyncua client.

The robot's logic is the signal robot's (device_sims.behaviour.RobotSim); these tests pin down its OPC UA
method face: the methods on the robot object, the argument checks, the Bad statuses of refusals, ``state``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.uaerrors import BadInvalidArgument, BadInvalidState, BadTypeMismatch

from cellctl.core.devices import RobotState
from device_sims.harness import SimCell
from device_sims.sims_config import SimsConfig, load_sims_config

METHOD_ROBOT = Path(__file__).resolve().parents[2] / "config" / "examples" / "method-robot"
TIMEOUT = 5.0
OBJECT = "ns=2;s=Robot1"
LOAD = "ns=2;s=Robot1.LoadProgram"
START = "ns=2;s=Robot1.StartCycle"


@pytest.fixture
def sim_config_dir() -> Path:
    return METHOD_ROBOT


@asynccontextmanager
async def ua_client(sim: SimCell) -> AsyncIterator[Client]:
    client = Client(sim.endpoint("robot1"), timeout=2)
    async with client:
        yield client


async def call(client: Client, method: str, *args: ua.Variant) -> Any:
    return await client.get_node(OBJECT).call_method(ua.NodeId.from_string(method), *args)


def program(number: int) -> ua.Variant:
    return ua.Variant(number, ua.VariantType.UInt16)


async def test_the_methods_hang_on_the_robot_object_with_the_declared_arguments(sim_cell: SimCell) -> None:
    async with ua_client(sim_cell) as client:
        children = await client.get_node(OBJECT).get_children()
        ids = {child.nodeid.to_string() for child in children}
        arguments = await client.get_node(LOAD).get_child("0:InputArguments")
        (argument,) = await arguments.read_value()

    assert {LOAD, START, "ns=2;s=Robot1.State", "ns=2;s=Robot1.CycleCount"} <= ids
    assert argument.DataType == ua.NodeId(ua.ObjectIds.UInt16)


async def test_load_program_loads_and_start_cycle_runs_through_running_to_done(sim_cell: SimCell) -> None:
    async with ua_client(sim_cell) as client:
        await call(client, LOAD, program(11))
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.active_program") == 11, TIMEOUT)
        await call(client, START)
        running = sim_cell.value("robot1.state")
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.state") == RobotState.DONE, TIMEOUT)

    assert running == RobotState.RUNNING
    assert sim_cell.value("robot1.cycle_count") == 1
    assert sim_cell.counters[("robot1", "program_load")] == 1
    assert sim_cell.counters[("robot1", "cycle_start")] == 1


async def test_an_argument_of_another_variant_type_is_refused_and_not_counted(sim_cell: SimCell) -> None:
    async with ua_client(sim_cell) as client:
        with pytest.raises(BadTypeMismatch):
            await call(client, LOAD, ua.Variant(11, ua.VariantType.Int64))

    assert sim_cell.counters[("robot1", "program_load")] == 0
    assert sim_cell.value("robot1.active_program") == 0


async def test_starting_with_no_program_is_bad_invalid_state_and_faults_the_robot(sim_cell: SimCell) -> None:
    async with ua_client(sim_cell) as client:
        with pytest.raises(BadInvalidState):
            await call(client, START)

    assert sim_cell.value("robot1.fault_code") == 1
    assert sim_cell.value("robot1.state") == RobotState.FAULT
    assert sim_cell.refused[("robot1", "cycle_start")] == 1
    assert sim_cell.counters[("robot1", "cycle_start")] == 0


@pytest.fixture
def sim_sims_file(tmp_path: Path) -> Path:
    """The example's behaviour, with a robot that knows programs 11 and 12 only."""
    sims = load_sims_config(METHOD_ROBOT / "sims.yaml")
    robot = sims.robot.model_copy(update={"programs": (11, 12)})
    file = tmp_path / "sims.yaml"
    file.write_text(
        SimsConfig.model_validate({**sims.model_dump(), "robot": robot.model_dump()}).model_dump_json()
    )
    return file


async def test_an_unknown_program_is_bad_invalid_argument_and_a_good_load_clears_it(
    sim_cell: SimCell,
) -> None:
    async with ua_client(sim_cell) as client:
        with pytest.raises(BadInvalidArgument):
            await call(client, LOAD, program(99))
        faulted = (sim_cell.value("robot1.fault_code"), sim_cell.value("robot1.state"))
        await call(client, LOAD, program(12))
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.active_program") == 12, TIMEOUT)

    assert faulted == (3, RobotState.FAULT)
    assert (sim_cell.value("robot1.fault_code"), sim_cell.value("robot1.state")) == (0, RobotState.IDLE)


async def test_a_fault_mid_cycle_sets_state_fault_and_the_code(sim_cell: SimCell) -> None:
    async with ua_client(sim_cell) as client:
        await call(client, LOAD, program(11))
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.active_program") == 11, TIMEOUT)
        sim_cell.faults.robot_fault("robot1", 900, at=0.5)
        await call(client, START)
        await sim_cell.wait_for(lambda: sim_cell.value("robot1.state") == RobotState.FAULT, TIMEOUT)

    assert sim_cell.value("robot1.fault_code") == 900
    assert sim_cell.value("robot1.cycle_count") == 0

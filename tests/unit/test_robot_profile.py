"""The robot profile's two handshake styles, on hand-scripted soft robots (the corners the soft cell skips).

tests/integration/test_profiles.py holds the behaviour both styles share; these pin down what each style
waits for: a method-style cycle ends on a fresh DONE only, a signal-style cycle stops on a fault code.
"""

from __future__ import annotations

import asyncio

import pytest

from cellctl.core.devices import (
    Handshake,
    MethodSignature,
    ProfileKind,
    Robot,
    RobotState,
    ValueKind,
    make_profile,
)
from cellctl.core.tags import TagValue
from cellctl.drivers.soft import SoftDriver
from cellctl.errors import DeviceError, DeviceFault

TIMEOUT = 5.0
METHOD_TAGS = ("active_program", "state", "cycle_count", "fault_code")
SIGNAL_TAGS = ("program", "active_program", "start", "busy", "done", "fault_code", "cycle_count")


def method_robot(
    state: RobotState = RobotState.IDLE, count: int = 5, by_name: bool = False
) -> tuple[SoftDriver, Robot]:
    load = MethodSignature((ValueKind.STRING if by_name else ValueKind.INT,))
    methods = {"load_program": load, "start_cycle": MethodSignature()}
    dev = SoftDriver(
        "robot1",
        METHOD_TAGS,
        initial={"active_program": 3, "state": state, "cycle_count": count, "fault_code": 0},
        methods=methods,
    )
    robot = Robot("robot1", dev, METHOD_TAGS, handshake=Handshake.METHOD, methods=methods)
    return dev, robot


async def test_a_done_left_from_the_last_cycle_does_not_end_the_next_one() -> None:
    dev, robot = method_robot(state=RobotState.DONE, count=5)
    called = asyncio.Event()
    dev.on_call("start_cycle", lambda _args: (called.set(), ())[1])

    cycle = asyncio.create_task(robot.run_cycle(TIMEOUT), name="test:cycle")
    await called.wait()
    for _ in range(5):  # let the profile look at the (stale) DONE it sees
        await asyncio.sleep(0)
    running_on_stale_done = not cycle.done()
    dev.set("cycle_count", 6)  # the robot finishes this cycle: the count grows, state stays DONE
    await cycle

    assert running_on_stale_done


async def test_a_method_cycle_ends_on_done_after_running_was_seen() -> None:
    dev, robot = method_robot(state=RobotState.IDLE, count=5)
    called = asyncio.Event()
    dev.on_call("start_cycle", lambda _args: (called.set(), ())[1])

    cycle = asyncio.create_task(robot.run_cycle(TIMEOUT), name="test:cycle")
    await called.wait()
    dev.set("state", RobotState.RUNNING)
    dev.set("state", RobotState.DONE)  # before the counter: either signal ends the wait
    await cycle

    assert dev.calls == [("start_cycle", ())]


async def test_a_method_cycle_that_faults_raises_with_the_fault_code() -> None:
    dev, robot = method_robot()

    def start(_args: tuple[TagValue, ...]) -> tuple[TagValue, ...]:
        dev.set("state", RobotState.RUNNING)
        dev.set("fault_code", 42)
        dev.set("state", RobotState.FAULT)
        return ()

    dev.on_call("start_cycle", start)

    with pytest.raises(DeviceFault, match="robot faulted during the cycle: fault code 42"):
        await robot.run_cycle(TIMEOUT)


async def test_a_method_cycle_that_never_finishes_times_out_as_a_device_fault() -> None:
    dev, robot = method_robot()
    dev.on_call("start_cycle", lambda _args: ())

    with pytest.raises(DeviceFault, match=r"robot1: robot cycle did not finish within 0\.05 s"):
        await robot.run_cycle(0.05)


async def test_a_refused_start_call_is_the_device_fault_of_the_cycle() -> None:
    dev, robot = method_robot()
    dev.fail_calls["start_cycle"] = DeviceFault("robot1", "method 'start_cycle' failed: BadInvalidState")

    with pytest.raises(DeviceFault, match="BadInvalidState"):
        await robot.run_cycle(TIMEOUT)


async def test_a_program_is_loaded_by_number_where_the_method_takes_a_number() -> None:
    dev, robot = method_robot()
    dev.on_call("load_program", lambda args: (dev.set("active_program", int(args[0])), ())[1])

    await robot.load_program(12, TIMEOUT)

    assert dev.calls == [("load_program", (12,))]


async def test_a_program_is_loaded_by_name_where_the_method_takes_a_string() -> None:
    dev, robot = method_robot(by_name=True)
    dev.on_call("load_program", lambda args: (dev.set("active_program", int(args[0])), ())[1])

    await robot.load_program(12, TIMEOUT)

    assert dev.calls == [("load_program", ("12",))]


async def test_a_faulted_method_robot_is_not_asked_to_load() -> None:
    dev, robot = method_robot()
    dev.set("fault_code", 7)

    with pytest.raises(DeviceFault, match="fault code 7"):
        await robot.load_program(12, TIMEOUT)
    assert dev.calls == []


async def test_a_signal_cycle_stops_on_a_fault_code_and_drops_start() -> None:
    dev = SoftDriver(
        "robot1",
        SIGNAL_TAGS,
        writable=("program", "start"),
        initial={"active_program": 3, "start": False, "busy": False, "done": False, "fault_code": 0},
    )
    dev.on_write(lambda tag, value: dev.set("fault_code", 13) if tag == "start" and value else None)
    robot = Robot("robot1", dev, SIGNAL_TAGS)

    with pytest.raises(DeviceFault, match="fault code 13"):
        await robot.run_cycle(TIMEOUT)

    assert dev.writes == [("start", True), ("start", False)]


def test_only_a_robot_has_a_method_handshake() -> None:
    dev = SoftDriver("press", ["start", "busy", "done"])

    with pytest.raises(DeviceError, match="a press has no method handshake"):
        make_profile(ProfileKind.PRESS, "press", dev, ["start"], handshake=Handshake.METHOD)


def test_make_profile_builds_the_robot_in_its_style() -> None:
    dev = SoftDriver("robot1", METHOD_TAGS)

    robot = make_profile(ProfileKind.ROBOT, "robot1", dev, METHOD_TAGS, handshake=Handshake.METHOD)

    assert isinstance(robot, Robot)
    assert robot.handshake is Handshake.METHOD

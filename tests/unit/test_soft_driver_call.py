"""SoftDriver.call: methods checked against their declared signature, recorded, and played by handlers."""

from __future__ import annotations

import pytest

from cellctl.core.devices import MethodSignature, ValueKind
from cellctl.core.ports import LinkState
from cellctl.core.tags import TagValue
from cellctl.drivers.soft import SoftDriver
from cellctl.errors import CommError, DeviceError, DeviceFault
from cellctl.schema.cell import DeviceConfig

INT, STRING, FLOAT = ValueKind.INT, ValueKind.STRING, ValueKind.FLOAT


def robot(**methods: MethodSignature) -> SoftDriver:
    return SoftDriver("robot1", ["state"], methods=methods)


async def test_a_call_is_recorded_and_answered_by_its_handler() -> None:
    dev = robot(load_program=MethodSignature((INT,)))
    dev.on_call("load_program", lambda args: ())

    outputs = await dev.call("load_program", [12])

    assert outputs == ()
    assert dev.calls == [("load_program", (12,))]


async def test_a_handler_returns_the_outputs() -> None:
    dev = robot(inspect=MethodSignature((FLOAT,), (INT, STRING)))
    dev.on_call("inspect", lambda args: (int(float(args[0]) * 2), "ok"))

    assert await dev.call("inspect", [1.5]) == (3, "ok")


async def test_a_declared_method_without_a_handler_returns_default_outputs() -> None:
    dev = robot(inspect=MethodSignature((), (INT, STRING, FLOAT, ValueKind.BOOL)))

    assert await dev.call("inspect", []) == (0, "", 0.0, False)
    assert dev.calls == [("inspect", ())]


async def test_an_unknown_method_is_a_device_error_naming_the_known_ones() -> None:
    dev = robot(start_cycle=MethodSignature())

    with pytest.raises(DeviceError, match=r"robot1: no method 'home' \(methods: start_cycle\)"):
        await dev.call("home", [])
    assert dev.calls == []


async def test_a_wrong_argument_count_is_a_device_error_and_not_recorded() -> None:
    dev = robot(start_cycle=MethodSignature())

    with pytest.raises(DeviceError, match=r"method 'start_cycle' takes 0 argument\(s\), not 1"):
        await dev.call("start_cycle", [1])
    assert dev.calls == []


@pytest.mark.parametrize(
    ("kind", "value"), [(INT, "12"), (INT, 1.5), (INT, True), (STRING, 12), (FLOAT, "x"), (ValueKind.BOOL, 1)]
)
async def test_an_argument_of_the_wrong_kind_is_a_device_error(kind: ValueKind, value: TagValue) -> None:
    dev = robot(load_program=MethodSignature((kind,)))

    with pytest.raises(DeviceError, match=f"argument 1 takes a {kind}"):
        await dev.call("load_program", [value])
    assert dev.calls == []


async def test_an_integer_is_a_fine_float_argument() -> None:
    dev = robot(move=MethodSignature((FLOAT,)))

    await dev.call("move", [3])

    assert dev.calls == [("move", (3,))]


async def test_a_call_while_the_link_is_down_is_a_comm_error_and_not_recorded() -> None:
    dev = robot(start_cycle=MethodSignature())
    dev.set_health(LinkState.DOWN, "cable pulled")

    with pytest.raises(CommError, match="link down"):
        await dev.call("start_cycle", [])
    assert dev.calls == []


async def test_an_injected_failure_is_raised_and_the_call_not_recorded() -> None:
    dev = robot(start_cycle=MethodSignature())
    dev.fail_calls["start_cycle"] = DeviceFault("robot1", "method 'start_cycle' failed: BadInvalidState")

    with pytest.raises(DeviceFault, match="BadInvalidState"):
        await dev.call("start_cycle", [])
    assert dev.calls == []


async def test_a_handler_may_refuse_with_a_device_fault() -> None:
    dev = robot(start_cycle=MethodSignature())

    def refuse(_args: tuple[TagValue, ...]) -> tuple[TagValue, ...]:
        raise DeviceFault("robot1", "method 'start_cycle' failed: BadInvalidState")

    dev.on_call("start_cycle", refuse)

    with pytest.raises(DeviceFault, match="BadInvalidState"):
        await dev.call("start_cycle", [])


async def test_a_handler_for_an_undeclared_method_makes_it_known_with_arguments_unchecked() -> None:
    dev = SoftDriver("robot1", ["state"])
    dev.on_call("anything", lambda args: (len(args),))

    assert await dev.call("anything", ["a", 2]) == (2,)


async def test_removing_a_handler_leaves_the_declared_defaults() -> None:
    dev = robot(inspect=MethodSignature((), (INT,)))
    remove = dev.on_call("inspect", lambda _args: (7,))
    remove()

    assert await dev.call("inspect", []) == (0,)


async def test_from_config_takes_the_devices_methods() -> None:
    config = DeviceConfig.model_validate(
        {
            "driver": "opcua",
            "endpoint": "opc.tcp://127.0.0.1:4840/robot",
            "profile": "robot",
            "handshake": "method",
            "methods": {
                "load_program": {"object": "ns=2;s=R", "method": "ns=2;s=R.Load", "inputs": ["string"]},
            },
            "tags": {"state": {"node": "ns=2;s=R.State", "datatype": "uint16"}},
        }
    )
    dev = SoftDriver.from_config("robot1", config)

    await dev.call("load_program", ["12"])
    with pytest.raises(DeviceError, match="takes a string"):
        await dev.call("load_program", [12])
    assert dev.calls == [("load_program", ("12",))]

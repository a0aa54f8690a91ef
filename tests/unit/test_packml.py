"""PackML state model: every (state, command) pair against an independent reading of ISA-TR88.00.02-2015."""

from __future__ import annotations

import itertools

import pytest

from cellctl.core.packml import (
    STATE_COMPLETE,
    TRANSITIONS,
    Command,
    State,
    allowed_commands,
    completion,
    is_acting,
    is_wait,
    next_state,
)
from cellctl.errors import InvalidTransition

# Written from the TR88.00.02-2015 state diagram, one arrow per line, without looking at TRANSITIONS.
# "SC" is state-complete. Abort reaches Aborting from every state but Aborting/Aborted; Stop reaches Stopping
# from every state of the cleared group except Stopping/Stopped/Clearing; the 2015 edition adds Hold from
# Starting, Suspending, Suspended, Unsuspending and Unholding.
EXPECTED_ARROWS = """
Stopped      Reset      Resetting
Resetting    SC         Idle
Idle         Start      Starting
Starting     SC         Execute
Execute      SC         Completing
Completing   SC         Complete
Complete     Reset      Resetting
Execute      Hold       Holding
Starting     Hold       Holding
Suspending   Hold       Holding
Suspended    Hold       Holding
Unsuspending Hold       Holding
Unholding    Hold       Holding
Holding      SC         Held
Held         Unhold     Unholding
Unholding    SC         Execute
Execute      Suspend    Suspending
Suspending   SC         Suspended
Suspended    Unsuspend  Unsuspending
Unsuspending SC         Execute
Resetting    Stop       Stopping
Idle         Stop       Stopping
Starting     Stop       Stopping
Execute      Stop       Stopping
Completing   Stop       Stopping
Complete     Stop       Stopping
Suspending   Stop       Stopping
Suspended    Stop       Stopping
Unsuspending Stop       Stopping
Holding      Stop       Stopping
Held         Stop       Stopping
Unholding    Stop       Stopping
Stopping     SC         Stopped
Stopped      Abort      Aborting
Resetting    Abort      Aborting
Idle         Abort      Aborting
Starting     Abort      Aborting
Execute      Abort      Aborting
Completing   Abort      Aborting
Complete     Abort      Aborting
Suspending   Abort      Aborting
Suspended    Abort      Aborting
Unsuspending Abort      Aborting
Holding      Abort      Aborting
Held         Abort      Aborting
Unholding    Abort      Aborting
Stopping     Abort      Aborting
Clearing     Abort      Aborting
Aborting     SC         Aborted
Aborted      Clear      Clearing
Clearing     SC         Stopped
"""

STATE_NUMBERS = {
    "Undefined": 0, "Clearing": 1, "Stopped": 2, "Starting": 3, "Idle": 4, "Suspended": 5, "Execute": 6,
    "Stopping": 7, "Aborting": 8, "Aborted": 9, "Holding": 10, "Held": 11, "Unholding": 12, "Suspending": 13,
    "Unsuspending": 14, "Resetting": 15, "Completing": 16, "Complete": 17,
}  # fmt: skip
COMMAND_NUMBERS = {
    "Reset": 1, "Start": 2, "Stop": 3, "Hold": 4, "Unhold": 5, "Suspend": 6, "Unsuspend": 7, "Abort": 8,
    "Clear": 9,
}  # fmt: skip
WAIT_STATES = {"Idle", "Suspended", "Held", "Complete", "Stopped", "Aborted"}


def _expected() -> dict[tuple[str, str], str]:
    arrows: dict[tuple[str, str], str] = {}
    for line in EXPECTED_ARROWS.strip().splitlines():
        source, trigger, target = line.split()
        assert (source, trigger) not in arrows, f"expectation lists {source} {trigger} twice"
        arrows[(source, trigger)] = target
    return arrows


EXPECTED = _expected()
PAIRS = list(itertools.product(STATE_NUMBERS, COMMAND_NUMBERS))


def test_states_carry_their_tr88_numbers() -> None:
    assert {s.label: int(s) for s in State} == STATE_NUMBERS


def test_commands_carry_their_tr88_numbers() -> None:
    assert {c.label.capitalize(): int(c) for c in Command} == COMMAND_NUMBERS


@pytest.mark.parametrize(("state_name", "command_name"), PAIRS)
def test_every_state_command_pair_matches_tr88(state_name: str, command_name: str) -> None:
    state, command = State.parse(state_name), Command.parse(command_name)
    expected = EXPECTED.get((state_name, command_name))
    if expected is None:
        with pytest.raises(InvalidTransition) as caught:
            next_state(state, command)
        assert caught.value.state == state_name
        assert caught.value.command == command_name.lower()
    else:
        assert next_state(state, command).label == expected


@pytest.mark.parametrize("state_name", list(STATE_NUMBERS))
def test_state_complete_leads_where_tr88_says(state_name: str) -> None:
    state = State.parse(state_name)
    expected = EXPECTED.get((state_name, "SC"))
    if expected is None:
        with pytest.raises(InvalidTransition):
            completion(state)
    else:
        assert completion(state).label == expected
        assert next_state(state, STATE_COMPLETE).label == expected


@pytest.mark.parametrize("state_name", list(STATE_NUMBERS))
def test_allowed_commands_agree_with_the_expected_arrows(state_name: str) -> None:
    expected = {cmd for (src, cmd) in EXPECTED if src == state_name and cmd != "SC"}
    assert {c.label.capitalize() for c in allowed_commands(State.parse(state_name))} == expected


@pytest.mark.parametrize("state_name", list(STATE_NUMBERS))
def test_acting_and_wait_states_are_classified(state_name: str) -> None:
    state = State.parse(state_name)
    acting = (state_name, "SC") in EXPECTED and state_name != "Execute"
    assert is_acting(state) is acting
    assert is_wait(state) is (state_name in WAIT_STATES)


def test_every_acting_state_completes_outside_the_acting_states() -> None:
    for state in (s for s in State if is_acting(s)):
        target = completion(state)
        assert is_wait(target) or target in (State.EXECUTE, State.COMPLETING), state


def test_the_table_has_exactly_the_expected_arrows() -> None:
    actual = {
        (source.label, "SC" if not isinstance(trigger, Command) else trigger.label.capitalize()): target.label
        for source, triggers in TRANSITIONS.items()
        for trigger, target in triggers.items()
    }
    assert actual == EXPECTED


def test_the_table_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[State.IDLE][Command.HOLD] = State.HOLDING  # type: ignore[index]


def test_an_unknown_command_name_is_an_invalid_transition_naming_it() -> None:
    with pytest.raises(InvalidTransition, match="frobnicate"):
        Command.parse("frobnicate", State.IDLE)

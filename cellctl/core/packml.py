"""ISA-TR88.00.02 (PackML, 2015) state model: the 17 states, the 9 commands, ONE transition table, unit modes.

Everything else (allowed commands, acting states, completion, where a unit mode may change) is computed here,
so the engine, the API and the TUI can never disagree about what a state and a mode allow.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum, IntEnum
from types import MappingProxyType

from cellctl.errors import InvalidTransition, ModeRefused


class State(IntEnum):
    """PackML states with their TR88 numbers (0 = Undefined, before the machine has a state)."""

    UNDEFINED = 0
    CLEARING = 1
    STOPPED = 2
    STARTING = 3
    IDLE = 4
    SUSPENDED = 5
    EXECUTE = 6
    STOPPING = 7
    ABORTING = 8
    ABORTED = 9
    HOLDING = 10
    HELD = 11
    UNHOLDING = 12
    SUSPENDING = 13
    UNSUSPENDING = 14
    RESETTING = 15
    COMPLETING = 16
    COMPLETE = 17

    @property
    def label(self) -> str:
        """The PackML display name, e.g. ``"Execute"``."""
        return self.name.capitalize()

    @classmethod
    def parse(cls, text: str) -> State:
        """The state named ``text`` (any case); ValueError for an unknown name."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown PackML state {text!r}") from None


class Command(IntEnum):
    """PackML commands with their TR88 numbers."""

    RESET = 1
    START = 2
    STOP = 3
    HOLD = 4
    UNHOLD = 5
    SUSPEND = 6
    UNSUSPEND = 7
    ABORT = 8
    CLEAR = 9

    @property
    def label(self) -> str:
        """The command as the API spells it, e.g. ``"unhold"``."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str, state: State = State.UNDEFINED) -> Command:
        """The command named ``text`` (any case); InvalidTransition naming ``state`` for an unknown one."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise InvalidTransition(state.label, text) from None


class Completion(Enum):
    """The state-complete event (SC): an acting state finished its work."""

    SC = "state_complete"


STATE_COMPLETE = Completion.SC
"""The one state-complete trigger."""

Trigger = Command | Completion
"""What moves the state machine: a command or the state-complete event."""

S, C = State, Command

# TR88.00.02-2015, including the Hold transitions from Starting, Suspending, Suspended, Unsuspending and
# Unholding that the 2015 edition added (OPC 30050 models them as StartingToHolding etc.).
# Abort is allowed from every state but Aborting and Aborted; Stop from every state of the "cleared" group.
TRANSITIONS: Mapping[State, Mapping[Trigger, State]] = MappingProxyType(
    {
        S.UNDEFINED: MappingProxyType({}),
        S.STOPPED: MappingProxyType({C.RESET: S.RESETTING, C.ABORT: S.ABORTING}),
        S.RESETTING: MappingProxyType({STATE_COMPLETE: S.IDLE, C.STOP: S.STOPPING, C.ABORT: S.ABORTING}),
        S.IDLE: MappingProxyType({C.START: S.STARTING, C.STOP: S.STOPPING, C.ABORT: S.ABORTING}),
        S.STARTING: MappingProxyType(
            {STATE_COMPLETE: S.EXECUTE, C.HOLD: S.HOLDING, C.STOP: S.STOPPING, C.ABORT: S.ABORTING}
        ),
        S.EXECUTE: MappingProxyType(
            {
                STATE_COMPLETE: S.COMPLETING,
                C.HOLD: S.HOLDING,
                C.SUSPEND: S.SUSPENDING,
                C.STOP: S.STOPPING,
                C.ABORT: S.ABORTING,
            }
        ),
        S.COMPLETING: MappingProxyType({STATE_COMPLETE: S.COMPLETE, C.STOP: S.STOPPING, C.ABORT: S.ABORTING}),
        S.COMPLETE: MappingProxyType({C.RESET: S.RESETTING, C.STOP: S.STOPPING, C.ABORT: S.ABORTING}),
        S.SUSPENDING: MappingProxyType(
            {STATE_COMPLETE: S.SUSPENDED, C.HOLD: S.HOLDING, C.STOP: S.STOPPING, C.ABORT: S.ABORTING}
        ),
        S.SUSPENDED: MappingProxyType(
            {C.UNSUSPEND: S.UNSUSPENDING, C.HOLD: S.HOLDING, C.STOP: S.STOPPING, C.ABORT: S.ABORTING}
        ),
        S.UNSUSPENDING: MappingProxyType(
            {STATE_COMPLETE: S.EXECUTE, C.HOLD: S.HOLDING, C.STOP: S.STOPPING, C.ABORT: S.ABORTING}
        ),
        S.HOLDING: MappingProxyType({STATE_COMPLETE: S.HELD, C.STOP: S.STOPPING, C.ABORT: S.ABORTING}),
        S.HELD: MappingProxyType({C.UNHOLD: S.UNHOLDING, C.STOP: S.STOPPING, C.ABORT: S.ABORTING}),
        S.UNHOLDING: MappingProxyType(
            {STATE_COMPLETE: S.EXECUTE, C.HOLD: S.HOLDING, C.STOP: S.STOPPING, C.ABORT: S.ABORTING}
        ),
        S.STOPPING: MappingProxyType({STATE_COMPLETE: S.STOPPED, C.ABORT: S.ABORTING}),
        S.ABORTING: MappingProxyType({STATE_COMPLETE: S.ABORTED}),
        S.ABORTED: MappingProxyType({C.CLEAR: S.CLEARING}),
        S.CLEARING: MappingProxyType({STATE_COMPLETE: S.STOPPED, C.ABORT: S.ABORTING}),
    }
)
"""state -> trigger -> next state. The only statement of the model; everything below is derived."""

del S, C


def next_state(state: State, trigger: Trigger) -> State:
    """The state ``trigger`` leads to from ``state``; InvalidTransition when the model does not allow it."""
    try:
        return TRANSITIONS[state][trigger]
    except KeyError:
        what = trigger.label if isinstance(trigger, Command) else trigger.value
        raise InvalidTransition(state.label, what) from None


class UnitMode(IntEnum):
    """PackML unit modes with their TR88 numbers; Changeover is a user-defined mode (TR88 allows them).

    Production makes parts from the job queue. Maintenance and Manual take no jobs: the cell can be reset,
    stopped, aborted and cleared, but not started. Changeover is never selected: the cell shows it while a
    changeover plan runs in Production.
    """

    PRODUCTION = 1
    MAINTENANCE = 2
    MANUAL = 3
    CHANGEOVER = 4

    @property
    def label(self) -> str:
        """The mode as the API and the journal spell it, e.g. ``"maintenance"``."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str, state: State = State.UNDEFINED) -> UnitMode:
        """A mode an operator may select, by name (any case); ModeRefused naming the choices otherwise."""
        try:
            mode = cls[text.strip().upper()]
        except KeyError:
            mode = None
        if mode is None or mode not in SELECTABLE_MODES:
            choices = ", ".join(m.label for m in SELECTABLE_MODES)
            raise ModeRefused(state.label, f"mode {text}", f"unknown unit mode (choose {choices})")
        return mode


SELECTABLE_MODES: tuple[UnitMode, ...] = (UnitMode.PRODUCTION, UnitMode.MAINTENANCE, UnitMode.MANUAL)
"""Modes the ``mode`` command may select; Changeover follows a running plan instead."""

MODE_CHANGE_STATES: frozenset[State] = frozenset({State.STOPPED, State.IDLE, State.ABORTED})
"""Where the unit mode may change. TR88.00.02 lets the unit define these among its wait states; we take the
OMAC implementation guide's usual set: the wait states with no job in progress (Held, Suspended and Complete
are wait states too, but a job is open there, and changing its rules half-way would change what it makes)."""

PRODUCING_MODES: frozenset[UnitMode] = frozenset({UnitMode.PRODUCTION, UnitMode.CHANGEOVER})
"""Modes in which the cell takes jobs (Start is accepted)."""


def allowed_commands(state: State, mode: UnitMode = UnitMode.PRODUCTION) -> tuple[Command, ...]:
    """Commands accepted in ``state`` and unit ``mode``, in command-number order."""
    commands = (t for t in TRANSITIONS[state] if isinstance(t, Command))
    return tuple(sorted(c for c in commands if c is not Command.START or mode in PRODUCING_MODES))


def check_command(state: State, mode: UnitMode, command: Command) -> State:
    """The state ``command`` leads to in ``state`` and ``mode``; InvalidTransition (ModeRefused when only the
    mode forbids it) otherwise."""
    target = next_state(state, command)
    if command is Command.START and mode not in PRODUCING_MODES:
        raise ModeRefused(
            state.label,
            command.label,
            f"the cell is in {mode.label} mode and takes no jobs (select production)",
        )
    return target


def mode_change_allowed(state: State) -> bool:
    """True where the unit mode may change (``MODE_CHANGE_STATES``)."""
    return state in MODE_CHANGE_STATES


def check_mode_change(state: State, mode: UnitMode) -> None:
    """ModeRefused unless the unit may change to ``mode`` in ``state``."""
    if not mode_change_allowed(state):
        where = ", ".join(s.label for s in sorted(MODE_CHANGE_STATES))
        raise ModeRefused(state.label, f"mode {mode.label}", f"the unit mode changes only in {where}")


def is_acting(state: State) -> bool:
    """True for a transient (acting) state that ends with state-complete; Execute is its own kind."""
    return STATE_COMPLETE in TRANSITIONS[state] and state is not State.EXECUTE


def is_wait(state: State) -> bool:
    """True for a wait state (Idle, Suspended, Held, Complete, Stopped, Aborted): only a command moves it."""
    return state is not State.UNDEFINED and STATE_COMPLETE not in TRANSITIONS[state]


def completion(state: State) -> State:
    """Where ``state`` goes on state-complete; InvalidTransition for a wait state."""
    return next_state(state, STATE_COMPLETE)

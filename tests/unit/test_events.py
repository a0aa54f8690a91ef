"""Event data: ``to_data`` gives exactly what ``dataclasses.asdict`` gives, without the timestamp."""

from __future__ import annotations

import collections
import dataclasses
import typing
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellctl.core.events import ALL_EVENT_TYPES, Event, JobEvent, Measurement, StepKpi

JSON_LIKE: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)
"""What an untyped field (``OperatorAction.args``) may hold: JSON data, tuples too."""

Pair = collections.namedtuple("Pair", "left right")

ODD: st.SearchStrategy[Any] = st.one_of(
    st.builds(Pair, JSON_LIKE, st.deferred(lambda: _builds(Measurement))),
    st.builds(collections.OrderedDict, st.dictionaries(st.text(max_size=5), JSON_LIKE, max_size=3)),
    st.frozensets(st.integers(), max_size=3),
)
"""Values no event should carry, but an untyped field could: they take ``asdict``'s own path."""


def _field_strategy(hint: Any) -> st.SearchStrategy[Any]:
    if hint is Any:
        return JSON_LIKE | ODD
    if typing.get_origin(hint) is tuple:
        (item, _) = typing.get_args(hint)
        return st.lists(_field_strategy(item), max_size=4).map(tuple)
    if dataclasses.is_dataclass(hint):
        return _builds(hint)
    if typing.get_origin(hint) is dict:
        key, value = typing.get_args(hint)
        return st.dictionaries(_field_strategy(key), _field_strategy(value), max_size=3)
    return st.from_type(hint)


def _builds(cls: Any) -> st.SearchStrategy[Any]:
    """Instances of a dataclass with every field drawn, defaults included."""
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: _field_strategy(hints[f.name]) for f in dataclasses.fields(cls)})


def _asdict(event: Event) -> dict[str, Any]:
    data = dataclasses.asdict(event)
    del data["ts"]
    return data


def test_every_event_type_and_nested_record_is_drawn() -> None:
    assert {Measurement, StepKpi} <= {
        typing.get_args(h)[0]
        for cls in ALL_EVENT_TYPES
        for h in typing.get_type_hints(cls).values()
        if typing.get_origin(h) is tuple
    }


@pytest.mark.parametrize("cls", ALL_EVENT_TYPES, ids=lambda cls: cls.__name__)
@given(data=st.data())
def test_to_data_is_asdict_without_ts(cls: type[Event], data: st.DataObject) -> None:
    event = data.draw(_builds(cls))
    fast, slow = event.to_data(), _asdict(event)
    assert fast == slow
    # repr tells 1 from 1.0, a tuple from a list and an enum member from its value, which == does not.
    assert repr(fast) == repr(slow)


@given(_builds(JobEvent))
def test_to_data_copies_containers(event: JobEvent) -> None:
    data = event.to_data()
    data["parameters"]["added"] = 1.0
    data["part_parameters"].append({})
    assert "added" not in event.parameters
    assert len(data["part_parameters"]) == len(event.part_parameters) + 1

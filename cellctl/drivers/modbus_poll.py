"""Which Modbus block to read next: each poll group at its own rate, faster groups first, refusals benched.

Pure (no I/O, time passed in), so the rules are testable with a manual clock:
- a group starts a cycle when it is due and reads its blocks one request at a time; its next cycle is due one
  interval after the last one was (never a burst to catch up: when late it is due now);
- among groups with blocks left, the one with the shortest interval goes first, so a slow group with many
  blocks delays a fast one by at most the one request in flight;
- a block the device refuses as a configuration mismatch is benched: left out of its group's cycles until a
  retry time that backs off (capped), and let back in on the next (re)connect;
- a coalesced block can be split into one block per tag, read in the current cycle (to find which tag of a
  refused block is the wrong one, when bridging a gap may be what the device refused).
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from cellctl.drivers._supervisor import Backoff
from cellctl.drivers.modbus_codec import ReadBlock, TagCodec

__all__ = ["MISMATCH_RETRY_CAP_S", "MISMATCH_RETRY_START_S", "PollGroupPlan", "PollSchedule"]

MISMATCH_RETRY_START_S = 1.0
"""First delay before a block refused as a configuration mismatch is read again."""
MISMATCH_RETRY_CAP_S = 60.0
"""Longest delay between reads of a block refused as a configuration mismatch."""


@dataclass(frozen=True, slots=True)
class PollGroupPlan:
    """The blocks of one poll group and its interval (``name`` None: the device's own poll interval)."""

    name: str | None
    interval_s: float
    blocks: tuple[ReadBlock, ...]


@dataclass(slots=True)
class _Group:
    name: str | None
    interval_s: float
    blocks: list[ReadBlock]
    due: float = 0.0
    pending: deque[ReadBlock] = field(default_factory=deque)
    cycles: int = 0


@dataclass(slots=True)
class _Bench:
    backoff: Backoff
    until: float = 0.0


class PollSchedule:
    """The poll plan of one device and where each group stands; the driver asks it what to read next."""

    def __init__(
        self,
        groups: Sequence[PollGroupPlan],
        *,
        mismatch_retry_start_s: float = MISMATCH_RETRY_START_S,
        mismatch_retry_cap_s: float = MISMATCH_RETRY_CAP_S,
        rng: random.Random | None = None,
    ) -> None:
        for plan in groups:
            if not plan.interval_s > 0:
                raise ValueError(f"poll group {plan.name!r}: the interval must be > 0")
        # Shortest interval first: the order in which groups with work left are served.
        self._groups = sorted(
            (_Group(plan.name, plan.interval_s, list(plan.blocks)) for plan in groups if plan.blocks),
            key=lambda g: g.interval_s,
        )
        self._retry = (mismatch_retry_start_s, mismatch_retry_cap_s)
        self._rng = rng or random.Random()
        self._benched: dict[ReadBlock, _Bench] = {}

    @property
    def blocks(self) -> tuple[ReadBlock, ...]:
        """Every block of the plan (fastest group first), splits included."""
        return tuple(block for group in self._groups for block in group.blocks)

    def group_blocks(self, name: str | None) -> tuple[ReadBlock, ...]:
        """The blocks of one group (empty for a group without readable tags)."""
        return tuple(next((g.blocks for g in self._groups if g.name == name), ()))

    def cycles(self, name: str | None) -> int:
        """Cycles the group has started since it was created."""
        return next((g.cycles for g in self._groups if g.name == name), 0)

    def restart(self, now: float) -> None:
        """A new connection: every group due now, nothing left over, benched blocks tried again."""
        for group in self._groups:
            group.due = now
            group.pending.clear()
        for bench in self._benched.values():
            bench.until = now

    def next_block(self, now: float) -> ReadBlock | None:
        """The block to read now, or None when no group has anything due."""
        for group in self._groups:
            if not group.pending and group.due <= now:
                self._start_cycle(group, now)
        for group in self._groups:
            if group.pending:
                return group.pending.popleft()
        return None

    def next_due(self) -> float:
        """When ``next_block`` will next have something (-inf: now; inf: never, no blocks)."""
        if any(group.pending for group in self._groups):
            return -math.inf
        return min((group.due for group in self._groups), default=math.inf)

    def _start_cycle(self, group: _Group, now: float) -> None:
        if self._benched:
            group.pending.extend(block for block in group.blocks if not self.benched(block, now))
        else:
            # No block is benched: skip hashing each one (a block hashes all its tags' codecs).
            group.pending.extend(group.blocks)
        group.cycles += 1
        group.due = max(group.due + group.interval_s, now)

    def benched(self, block: ReadBlock, now: float) -> bool:
        """True while ``block`` is left out of its group's cycles."""
        if not self._benched:
            return False
        bench = self._benched.get(block)
        return bench is not None and bench.until > now

    def bench(self, block: ReadBlock, now: float) -> float:
        """Leave ``block`` out until a retry time that grows with each refusal; returns the delay."""
        bench = self._benched.get(block)
        if bench is None:
            start, cap = self._retry
            bench = self._benched[block] = _Bench(Backoff(start, cap, rng=self._rng))
        delay = bench.backoff.next_delay()
        bench.until = now + delay
        return delay

    def accepted(self, block: ReadBlock) -> None:
        """The device answered ``block``: it, and every benched block sharing a tag with it, is read every
        cycle again (so a tag read on demand never keeps a value its benched block would leave stale)."""
        if not self._benched:
            return
        names = {tag.name for tag in block.tags}
        for other in [b for b in self._benched if b == block or names & {t.name for t in b.tags}]:
            del self._benched[other]

    def split(self, block: ReadBlock) -> tuple[ReadBlock, ...]:
        """Replace a coalesced block by one block per tag's registers, read in the current cycle."""
        group = next((g for g in self._groups if block in g.blocks), None)
        spans: dict[tuple[int, int], list[TagCodec]] = {}
        for tag in block.tags:
            spans.setdefault((tag.address, tag.width), []).append(tag)
        if group is None or len(spans) < 2:
            return (block,)
        # Tags on the same registers (bits of one register) stay together: they stand or fall as one.
        parts = tuple(ReadBlock(block.table, at, width, tuple(tags)) for (at, width), tags in spans.items())
        at = group.blocks.index(block)
        group.blocks[at : at + 1] = parts
        if block in group.pending:
            group.pending.remove(block)
        group.pending.extendleft(reversed(parts))
        self._benched.pop(block, None)
        return parts

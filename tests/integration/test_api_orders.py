"""Orders and unit modes through the control API: concurrent submits of one order id make one job (the store
holds the order id), per-part parameters, and ``cellctl ctl mode``.

The concurrent submits come from MES callers: on the control socket only the lease holder's connection may
submit, but an MES's submits are not lease-bound, so they may race each other and the socket's holder."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cellctl.api.client import ControlClient
from cellctl.api.protocol import Request
from cellctl.api.server import ControlServer
from cellctl.api.service import ControlService, MesCaller
from cellctl.core.events import StateChanged
from cellctl.engine import Engine, State
from cellctl.errors import ApiError
from cellctl.schema.load import load_config
from cellctl.store import Store
from cellctl.telemetry.recorder import Recorder
from tests.integration.test_api import WAIT_S, run_ctl, start, stop
from tests.softcell import soft_cell

CLIENTS = 16


@dataclass
class StoredCell:
    path: Path
    engine: Engine
    store: Store
    service: ControlService


@pytest.fixture
async def stored_cell(config_dir: Path, tmp_path: Path) -> AsyncIterator[StoredCell]:
    """The real Engine on a soft cell, journaling into a real store, served on a real socket."""
    config = load_config(config_dir)
    store = await Store.open(tmp_path / "cell.db")
    sink = Recorder(store, config.cell.identity, telemetry=False)
    engine = Engine(config, soft_cell(config.cell), sink, orders=store)
    engine_task = asyncio.get_running_loop().create_task(engine.run(), name="test:engine")
    await engine.wait_for(State.STOPPED, timeout=WAIT_S)
    service = ControlService(engine, identity=config.cell.identity, sink=sink)
    server = ControlServer(tmp_path / "cell.sock", service)
    server_task = await start(server)
    try:
        yield StoredCell(server.path, engine, store, service)
    finally:
        await stop(server_task)
        await stop(engine_task)
        await store.close()


async def submit(path: Path, **order: Any) -> dict[str, Any] | ApiError:
    """One client's submit: the job, or the refusal."""
    async with ControlClient(path) as client:
        try:
            return await client.request("submit", **order)
        except ApiError as exc:
            return exc


async def mes_submit(cell: StoredCell, k: int, **order: Any) -> dict[str, Any] | ApiError:
    """MES number ``k``'s submit through the service: the job, or the refusal."""
    reply = await cell.service.handle(Request(id=k, cmd="submit", args=order), MesCaller(f"mes{k}"))
    if reply.error is not None:
        return ApiError(reply.error.code, reply.error.message)
    assert reply.result is not None
    return reply.result


async def queued_entries(store: Store, order_id: str) -> list[str | None]:
    entries = await store.journal(kinds={"job"})
    return [e.job_id for e in entries if e.data["order_id"] == order_id and e.data["status"] == "queued"]


async def test_concurrent_submits_of_one_order_make_one_job_that_every_client_gets(
    stored_cell: StoredCell,
) -> None:
    order = {"order_id": "PO-7", "variant": "oslo", "quantity": 2, "parameters": {"staple_pitch": 10.0}}

    async with asyncio.timeout(WAIT_S):
        replies = await asyncio.gather(*(mes_submit(stored_cell, k, **order) for k in range(CLIENTS)))

    jobs = {r["job_id"] for r in replies if isinstance(r, dict)}
    assert not [r for r in replies if isinstance(r, ApiError)]
    assert len(jobs) == 1
    assert await queued_entries(stored_cell.store, "PO-7") == list(jobs)
    assert [j.job_id for j in stored_cell.engine.status().queue] == list(jobs)


async def test_concurrent_submits_of_one_order_id_with_two_contents_make_one_job_and_refuse_the_other(
    stored_cell: StoredCell,
) -> None:
    orders = [{"order_id": "PO-8", "variant": "oslo", "quantity": 1 + k % 2} for k in range(CLIENTS)]

    async with asyncio.timeout(WAIT_S):
        replies = await asyncio.gather(*(mes_submit(stored_cell, k, **o) for k, o in enumerate(orders)))

    accepted = [
        (o["quantity"], r["job_id"]) for o, r in zip(orders, replies, strict=True) if isinstance(r, dict)
    ]
    refused = [(o["quantity"], r) for o, r in zip(orders, replies, strict=True) if isinstance(r, ApiError)]
    winner = {q for q, _ in accepted}
    assert len(winner) == 1 and len({j for _, j in accepted}) == 1
    assert len(accepted) == len(refused) == CLIENTS // 2
    assert all(q not in winner and e.code == "job_error" for q, e in refused)
    assert await queued_entries(stored_cell.store, "PO-8") == [accepted[0][1]]


async def test_a_batch_size_one_order_over_the_api_keeps_each_parts_parameters(
    stored_cell: StoredCell,
) -> None:
    parts = [{"staple_pitch": 9.0}, {"staple_pitch": 13.0}]

    job = await submit(stored_cell.path, order_id="PO-9", variant="oslo", quantity=2, part_parameters=parts)
    wrong = await submit(
        stored_cell.path, order_id="PO-10", variant="oslo", quantity=3, part_parameters=parts
    )

    assert isinstance(job, dict) and job["part_parameters"] == parts
    assert isinstance(wrong, ApiError) and "2 parameter sets for a quantity of 3" in str(wrong)


async def test_ctl_mode_selects_maintenance_and_the_journal_says_so(stored_cell: StoredCell) -> None:
    ran = await run_ctl("--socket", str(stored_cell.path), "mode", "maintenance", "--json")
    async with ControlClient(stored_cell.path) as client:
        with pytest.raises(ApiError) as refused:
            await client.request("mode", name="changeover")  # shown while a plan runs, never selected

    assert ran.code == 0, ran.err
    assert json.loads(ran.out)["mode"] == "maintenance"
    assert refused.value.code == "bad_request"
    entries = await stored_cell.store.journal(kinds={StateChanged.kind, "operator_action"})
    mode_entry = next(e for e in entries if e.kind == StateChanged.kind and e.data["command"] == "mode")
    assert (mode_entry.data["mode"], mode_entry.data["state"]) == ("maintenance", "Stopped")
    assert any(e.kind == "operator_action" and e.data["action"] == "mode" for e in entries)


async def test_ctl_submit_with_one_part_option_per_part_sends_batch_size_one(stored_cell: StoredCell) -> None:
    ran = await run_ctl(
        "--socket", str(stored_cell.path), "submit", "PO-11", "oslo", "2", "--part", "staple_pitch=9",
        "--part", "staple_pitch=15", "--json",
    )  # fmt: skip

    assert ran.code == 0, ran.err
    assert json.loads(ran.out)["part_parameters"] == [{"staple_pitch": 9.0}, {"staple_pitch": 15.0}]

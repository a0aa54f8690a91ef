"""``cellctl ctl``: talk to a running controller over its control socket (status, commands, orders, events).

Exit codes: 0 done, 1 refused by the controller, 2 usage or configuration error, 3 no controller reachable.

The control lease belongs to a connection, and each ``ctl`` run is one short connection: a state-changing
action takes the lease for its own request when nobody holds it (and frees it as ctl exits), and is refused
(``lease_held``) while another client, e.g. a TUI, holds it. ``ctl lease take`` from a higher role than the
holder's takes it over from that client, which frees it as ctl exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from cellctl.api.client import ConnectionLost, ControlClient, NotReachable
from cellctl.api.protocol import PACKML_COMMANDS, EventPush, parse_due
from cellctl.errors import ApiError, ConfigError
from cellctl.schema.load import load_config

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

REQUEST_TIMEOUT_S = 30.0
"""How long one request may wait for its reply before the controller counts as unreachable."""


class UsageError(Exception):
    """The command line or the configuration does not say what to do."""


def add_parser(sub: Any) -> None:
    """Register ``ctl`` and its actions on the main parser's subcommands."""
    ctl = sub.add_parser("ctl", help="control a running controller through its socket")
    where = ctl.add_mutually_exclusive_group()
    # SUPPRESS: a --config given before ``ctl`` (on the main parser) is not overwritten by our default.
    where.add_argument("--socket", default=argparse.SUPPRESS, help="path of the control socket")
    where.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="folder holding cell.yaml (or a cell file): its api.socket",
    )
    ctl.add_argument(
        "--timeout", type=float, default=REQUEST_TIMEOUT_S, help="seconds to wait for each reply (default 30)"
    )
    actions = ctl.add_subparsers(dest="ctl_action", required=True, metavar="ACTION")

    status = actions.add_parser("status", help="the cell's state, job, queue and counters")
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    for name in PACKML_COMMANDS:
        command = actions.add_parser(name, help=f"PackML {name.capitalize()}")
        command.add_argument("--json", action="store_true", help="print the resulting status as JSON")

    mode = actions.add_parser("mode", help="select the unit mode (in Stopped, Idle or Aborted)")
    mode.add_argument("mode_name", choices=("production", "maintenance", "manual"), metavar="MODE")
    mode.add_argument("--json", action="store_true", help="print the resulting status as JSON")

    submit = actions.add_parser("submit", help="queue an order")
    submit.add_argument("order_id")
    submit.add_argument("variant")
    submit.add_argument("quantity", type=int, metavar="QTY")
    submit.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="customer parameter (repeatable)"
    )
    submit.add_argument(
        "--part",
        action="append",
        default=[],
        metavar="NAME=VALUE[,NAME=VALUE]",
        help="batch size one: one part's parameters (repeat once per part, QTY times)",
    )
    submit.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    submit.add_argument(
        "--due",
        metavar="TIME",
        help="when the order should be finished: ISO 8601 with a timezone (2026-11-28T14:00+01:00) "
        "or epoch seconds",
    )
    submit.add_argument("--json", action="store_true", help="print the job as JSON")

    cancel = actions.add_parser("cancel", help="cancel a queued job, by its id or by its order (--order)")
    which = cancel.add_mutually_exclusive_group(required=True)
    which.add_argument("job_id", nargs="?")
    which.add_argument("--order", dest="order_id", metavar="ORDER_ID", help="cancel the job of this order")
    cancel.add_argument("--json", action="store_true", help="print the job as JSON")

    reorder = actions.add_parser("reorder", help="set the queue's order (every queued job id, once each)")
    reorder.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    reorder.add_argument("--json", action="store_true", help="print the resulting status as JSON")

    proposal = actions.add_parser("apply-proposal", help="reorder the queue as the scheduler proposes")
    proposal.add_argument("--json", action="store_true", help="print the resulting status as JSON")

    confirm = actions.add_parser(
        "confirm", help="answer a changeover step waiting for a person (see status: waiting)"
    )
    confirm.add_argument("step", help="the waiting step's id")
    confirm.add_argument("--evidence", default=None, help="the scanned id the step asks for")
    confirm.add_argument("--json", action="store_true", help="print the resulting status as JSON")

    sign_off = actions.add_parser(
        "sign-off", help="end the first-article qualification after a changeover (journaled with who)"
    )
    sign_off.add_argument("--note", default="", help="why the setup is accepted (journaled)")
    sign_off.add_argument("--json", action="store_true", help="print the resulting status as JSON")

    ack = actions.add_parser("ack", help="acknowledge an alarm (see alarms); journaled with who")
    ack.add_argument(
        "alarm_id", metavar="ALARM_ID", help="the alarm's id, e.g. estop or interlock:guard_door"
    )
    ack.add_argument("--json", action="store_true", help="print the resulting status as JSON")

    alarms = actions.add_parser("alarms", help="list the alarms active or not yet acknowledged")
    alarms.add_argument("--json", action="store_true", help="print the alarms as JSON")

    spc = actions.add_parser("spc", help="the control chart of one characteristic of a variant")
    spc.add_argument("variant")
    spc.add_argument("characteristic", metavar="CHAR")
    spc.add_argument("--last", type=int, default=25, metavar="N", help="print the last N points (default 25)")
    spc.add_argument("--json", action="store_true", help="print the chart data as JSON")

    watch = actions.add_parser("watch", help="print events as they happen, until Ctrl-C")
    watch.add_argument("--count", type=int, default=None, metavar="N", help="stop after N events")
    watch.add_argument("--json", action="store_true", help="print each event as a JSON line")

    lease = actions.add_parser(
        "lease", help="show who holds the control lease; take it over (higher role) or release it"
    )
    lease.add_argument("lease_action", nargs="?", default="show", choices=("show", "take", "release"))
    lease.add_argument("--json", action="store_true", help="print the lease as JSON")

    whoami = actions.add_parser("whoami", help="who the controller sees: user, role, and who holds the lease")
    whoami.add_argument("--json", action="store_true", help="print as JSON")

    devices = actions.add_parser("devices", help="each device's link health and its tags' last values")
    devices.add_argument("--json", action="store_true", help="print the devices as JSON")

    journal = actions.add_parser("journal", help="print journal entries, oldest first")
    journal.add_argument("--after", type=int, default=0, metavar="ID", help="entries after this id")
    journal.add_argument("--limit", type=int, default=100, metavar="N", help="at most N entries")
    journal.add_argument("--json", action="store_true", help="print each entry as a JSON line")

    ctl.set_defaults(handler=run)


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one ``cellctl ctl`` action and return its exit code (Ctrl-C ends ``watch`` with 0); output goes to
    ``out``/``err`` (default: stdout/stderr)."""
    try:
        return asyncio.run(run_async(args, out=out, err=err))
    except KeyboardInterrupt:
        return EXIT_OK


async def run_async(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The same as ``run`` inside a running event loop."""
    stdout = out or sys.stdout
    stderr = err or sys.stderr
    try:
        path = socket_path(args)
        action = _ACTIONS[args.ctl_action]
        async with ControlClient(path) as client:
            await action(client, args, stdout)
    except UsageError as exc:
        stderr.write(f"cellctl ctl: {exc}\n")
        return EXIT_USAGE
    except ConfigError as exc:
        stderr.write(f"{exc}\n")
        stderr.write("cellctl ctl: configuration invalid\n")
        return EXIT_USAGE
    except NotReachable as exc:
        stderr.write(f"{exc}: is `cellctl run` running?\n")
        return EXIT_UNREACHABLE
    except ConnectionLost as exc:
        stderr.write(f"cellctl ctl: {exc}\n")
        return EXIT_UNREACHABLE
    except TimeoutError:
        stderr.write(f"cellctl ctl: no reply from the controller within {args.timeout:g} s\n")
        return EXIT_UNREACHABLE
    except ApiError as exc:
        stderr.write(f"refused ({exc.code}): {exc}\n")
        if exc.code == "lease_held":
            stderr.write(
                "cellctl ctl: another client (a TUI?) has control; each ctl run holds the lease only for its "
                "own request, so release it there, or `cellctl ctl lease take` from a higher role\n"
            )
        return EXIT_REFUSED
    return EXIT_OK


def socket_path(args: argparse.Namespace) -> Path:
    """The socket from ``--socket``, or from the cell file named by ``--config``; UsageError without."""
    socket = getattr(args, "socket", None)
    if socket is not None:
        return Path(socket)
    config = getattr(args, "config", None)
    if config is None:
        raise UsageError("say where the controller is: --socket PATH or --config DIR")
    loaded = load_config(config)
    return loaded.resolve(loaded.cell.api.socket)


# --- actions --------------------------------------------------------------------------------------------

Action = Callable[[ControlClient, argparse.Namespace, TextIO], Awaitable[None]]


async def _ask(client: ControlClient, args: argparse.Namespace, cmd: str, **kwargs: Any) -> dict[str, Any]:
    async with asyncio.timeout(args.timeout):
        return await client.request(cmd, **kwargs)


async def _status(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    status = await _ask(client, args, "status")
    if args.json:
        _print_json(status, out)
    else:
        out.write(format_status(status))


async def _command(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    status = await _ask(client, args, "command", name=args.ctl_action)
    if args.json:
        _print_json(status, out)
    else:
        out.write(f"{args.ctl_action}: accepted, state {status.get('state', '?')}\n")


async def _submit(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    parameters = parse_params(args.param)
    parts = [parse_params([i for i in item.split(",") if i.strip()]) for item in args.part]
    due = parse_due_option(args.due)
    job = await _ask(
        client,
        args,
        "submit",
        order_id=args.order_id,
        variant=args.variant,
        quantity=args.quantity,
        parameters=parameters,
        priority=args.priority,
        **({"due": due} if due is not None else {}),
        **({"part_parameters": parts} if parts else {}),
    )
    if args.json:
        _print_json(job, out)
    else:
        out.write(f"{format_job(job)}\n")


async def _mode(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    status = await _ask(client, args, "mode", name=args.mode_name)
    if args.json:
        _print_json(status, out)
    else:
        out.write(f"mode: {status.get('mode', '?')}, state {status.get('state', '?')}\n")


async def _cancel(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    which = {"order_id": args.order_id} if args.order_id is not None else {"job_id": args.job_id}
    job = await _ask(client, args, "cancel", **which)
    if args.json:
        _print_json(job, out)
    else:
        out.write(f"{format_job(job)}\n")


async def _reorder(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    status = await _ask(client, args, "reorder", job_ids=list(args.job_ids))
    _print_queue(status, args, out)


async def _apply_proposal(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    status = await _ask(client, args, "apply_proposal")
    _print_queue(status, args, out)


def _print_queue(status: dict[str, Any], args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        _print_json(status, out)
        return
    queue = [j for j in status.get("queue") or [] if isinstance(j, dict)]
    out.write(f"queue reordered: {len(queue)} job(s)\n")
    for job in queue:
        out.write(f"  {format_job(job)}\n")


async def _confirm(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    status = await _ask(client, args, "confirm", step=args.step, evidence=args.evidence)
    if args.json:
        _print_json(status, out)
        return
    out.write(f"step {args.step} confirmed\n")
    for prompt in status.get("prompts") or []:
        if isinstance(prompt, dict):
            out.write(f"still waiting: {_format_prompt(prompt)}\n")


async def _sign_off(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    status = await _ask(client, args, "sign_off", note=args.note)
    if args.json:
        _print_json(status, out)
    else:
        out.write(f"first article signed off: state {status.get('state', '?')}\n")


async def _ack(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    status = await _ask(client, args, "ack", alarm=args.alarm_id)
    if args.json:
        _print_json(status, out)
        return
    out.write(f"alarm {args.alarm_id} acknowledged\n")


async def _alarms(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    status = await _ask(client, args, "status")
    alarms = [a for a in status.get("alarms") or [] if isinstance(a, dict)]
    if args.json:
        _print_json(alarms, out)
        return
    if not alarms:
        out.write("no alarms\n")
    for alarm in alarms:
        out.write(format_alarm(alarm) + "\n")


async def _spc(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    if args.last < 1:
        raise UsageError("--last must be at least 1")
    chart = await _ask(client, args, "spc", variant=args.variant, characteristic=args.characteristic)
    if args.json:
        _print_json(chart, out)
    else:
        out.write(format_chart(chart, title=f"{args.variant}/{args.characteristic}", last=args.last))


async def _watch(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    async with asyncio.timeout(args.timeout):
        await client.watch()
    seen = 0
    async for push in client.events():
        out.write(json.dumps(push.model_dump(mode="json")) + "\n" if args.json else format_event(push) + "\n")
        out.flush()
        seen += 1
        if args.count is not None and seen >= args.count:
            return


async def _journal(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    result = await _ask(client, args, "journal", after_id=args.after, limit=args.limit)
    for entry in result.get("entries", []):
        if args.json:
            _print_json(entry, out, indent=None)
        else:
            out.write(format_entry(entry) + "\n")


async def _lease(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    result = await _ask(client, args, "lease", action=args.lease_action)
    if args.json:
        _print_json(result, out)
        return
    lease = result.get("lease")
    if args.lease_action == "take":
        # This connection ends with ctl: the lease is free again once we exit.
        role = lease.get("role", "?") if isinstance(lease, dict) else "?"
        out.write(f"control lease taken as {role}; released again as ctl exits\n")
    elif args.lease_action == "release" and lease is None:
        out.write("control lease: free\n")
    else:
        out.write(f"control lease: {format_lease(lease)}\n")


async def _whoami(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    hello = await _ask(client, args, "hello")
    caller = hello.get("caller") or {}
    view = {"user": caller.get("user"), "uid": caller.get("uid"), "role": hello.get("role")}
    view["lease"] = hello.get("lease")
    if args.json:
        _print_json(view, out)
        return
    out.write(f"user   {view['user']} (uid {view['uid']})\nrole   {view['role']}\n")
    out.write(f"lease  {format_lease(view['lease'])}\n")


async def _devices(client: ControlClient, args: argparse.Namespace, out: TextIO) -> None:
    result = await _ask(client, args, "devices")
    devices = [d for d in result.get("devices") or [] if isinstance(d, dict)]
    if args.json:
        _print_json(devices, out)
        return
    for device in devices:
        out.write(format_device(device))


_ACTIONS: dict[str, Action] = {
    "status": _status,
    "submit": _submit,
    "mode": _mode,
    "cancel": _cancel,
    "reorder": _reorder,
    "apply-proposal": _apply_proposal,
    "confirm": _confirm,
    "sign-off": _sign_off,
    "ack": _ack,
    "alarms": _alarms,
    "spc": _spc,
    "watch": _watch,
    "journal": _journal,
    "lease": _lease,
    "whoami": _whoami,
    "devices": _devices,
    **dict.fromkeys(PACKML_COMMANDS, _command),
}


# --- formatting -----------------------------------------------------------------------------------------


def parse_params(items: list[str]) -> dict[str, float]:
    """``["pitch_mm=12.5", ...]`` -> ``{"pitch_mm": 12.5}``; UsageError naming the bad item."""
    params: dict[str, float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--param {item!r}: expected NAME=VALUE")
        try:
            params[name.strip()] = float(text)
        except ValueError:
            raise UsageError(f"--param {item!r}: {text!r} is not a number") from None
    return params


def parse_due_option(text: str | None) -> float | None:
    """``--due``: epoch seconds or ISO 8601 with a timezone -> epoch seconds; UsageError saying why not."""
    if text is None:
        return None
    try:
        value: object = float(text)
    except ValueError:
        value = text
    try:
        return parse_due(value)
    except ValueError as exc:
        raise UsageError(f"--due: {exc}") from None


def _print_json(data: Any, out: TextIO, indent: int | None = 2) -> None:
    out.write(json.dumps(data, indent=indent, sort_keys=indent is not None) + "\n")


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def format_job(job: dict[str, Any]) -> str:
    """One job on one line: id, status, order, variant, progress and counts."""
    counts = f"good {job.get('good', 0)}, bad {job.get('bad', 0)}, invalid {job.get('invalid', 0)}"
    params = job.get("parameters") or {}
    text = (
        f"job {job.get('job_id', '?')} {job.get('status', '?')}: order {job.get('order_id', '?')}, "
        f"{job.get('variant', '?')} {job.get('produced', 0)}/{job.get('quantity', '?')} ({counts})"
    )
    if params:
        text += " " + " ".join(
            f"{k}={v:g}" if isinstance(v, int | float) else f"{k}={v}" for k, v in params.items()
        )
    if job.get("priority"):
        text += f" priority {job['priority']}"
    if isinstance(job.get("due"), int | float):
        text += f" due {_when(job['due'])}"
    if job.get("reason"):
        text += f" ({job['reason']})"
    return text


def format_status(status: dict[str, Any]) -> str:
    """The status (CellStatus.to_dict()) as a two-column table for a person."""
    rows: list[tuple[str, str]] = []
    if status.get("cell"):
        rows.append(("cell", str(status["cell"])))
    state = f"{status.get('state', '?')} ({status.get('state_no', '?')})"
    if isinstance(status.get("since"), int | float):
        state += f" since {_when(status['since'])}"
    rows.append(("state", state))
    if status.get("reason"):
        rows.append(("reason", str(status["reason"])))
    rows.append(("mode", str(status.get("mode", "-"))))
    rows.append(("allowed", ", ".join(str(c) for c in status.get("allowed_commands") or []) or "-"))
    rows.append(("variant", str(status.get("variant") or "unknown")))
    job = status.get("current_job")
    rows.append(("job", format_job(job) if isinstance(job, dict) else "-"))
    queue = [j for j in status.get("queue") or [] if isinstance(j, dict)]
    rows.append(("queue", f"{len(queue)} job(s)" if queue else "empty"))
    rows.extend(("", format_job(j)) for j in queue)
    proposed = status.get("proposed_order")
    if isinstance(proposed, dict) and list(proposed.get("job_ids") or []) != [j.get("job_id") for j in queue]:
        rows.append(("proposed", _format_proposal(proposed)))
    changeover = status.get("changeover")
    if isinstance(changeover, dict):
        rows.append(("changeover", _format_changeover(changeover)))
        for step in changeover.get("steps") or []:
            if isinstance(step, dict):
                rows.append(("", f"{step.get('id', '?')}: {step.get('status', '?')}"))
    for prompt in status.get("prompts") or []:
        if isinstance(prompt, dict):
            rows.append(("waiting", _format_prompt(prompt)))
    qualification = status.get("qualification")
    if isinstance(qualification, dict):
        rows.append(("first article", _format_qualification(qualification)))
    recovery = status.get("recovery")
    if isinstance(recovery, dict):
        rows.extend(_format_recovery(recovery))
    telemetry = status.get("telemetry")
    if isinstance(telemetry, dict):
        rows.append(("telemetry", format_telemetry(telemetry)))
    if "lease" in status:
        rows.append(("control", format_lease(status["lease"])))
    for alarm in status.get("alarms") or []:
        if isinstance(alarm, dict):
            rows.append(("alarm", format_alarm(alarm)))
    for summary in status.get("spc") or []:
        if isinstance(summary, dict):
            rows.append(("spc", _format_spc_summary(summary)))
    counters = status.get("counters")
    if isinstance(counters, dict):
        rows.append(("counters", ", ".join(f"{k} {v}" for k, v in counters.items())))
    oee = status.get("oee")
    if isinstance(oee, dict):
        rows.append(("oee", _format_oee(oee)))
    store = status.get("store")
    if isinstance(store, dict):
        rows.append(("store", _format_store(store)))
    width = max(len(label) for label, _ in rows)
    return "".join(f"{label:<{width}}  {value}\n" for label, value in rows)


def format_lease(lease: Any) -> str:
    """Who holds the control lease, on one line ("free" when nobody)."""
    if not isinstance(lease, dict):
        return "free"
    since = f" since {_when(lease['since'])}" if isinstance(lease.get("since"), int | float) else ""
    return f"{lease.get('by', '?')} ({lease.get('role', '?')}, pid {lease.get('pid', '?')}){since}"


def format_device(device: dict[str, Any]) -> str:
    """One device: its link state and how long, the last error, then one line per tag."""
    state = f"{device.get('state', '?')} for {_num(device.get('state_for_s'), '.1f')} s"
    lines = [f"{device.get('device', '?')} ({device.get('protocol', '?')}): {state}"]
    if device.get("error"):
        lines[0] += f" ({device['error']})"
    for tag in device.get("tags") or []:
        if isinstance(tag, dict):
            value = _compact(tag.get("value"))
            lines.append(
                f"  {tag.get('tag', '?'):<24} {value:<16} {tag.get('quality', '?'):<9} "
                f"{_num(tag.get('age_s'), '.1f')} s ago"
            )
    return "".join(f"{line}\n" for line in lines)


def _format_store(store: dict[str, Any]) -> str:
    """The outbox against its bound, telemetry dropped and the failing cause, on one line."""
    parts = []
    if "rows" in store:
        mib = 1024 * 1024
        parts.append(
            f"outbox {store.get('rows')}/{store.get('max_rows')} rows, "
            f"{_num(store.get('bytes', 0) / mib, '.1f')}/{_num(store.get('max_bytes', 0) / mib, '.0f')} MiB"
        )
    dropped = store.get("dropped") or {}
    if isinstance(dropped, dict) and dropped:
        parts.append("dropped " + ", ".join(f"{k} {v}" for k, v in dropped.items()))
    if store.get("failing"):
        parts.append(f"FAILING: {store['failing']}")
    return "; ".join(parts) or "-"


def format_telemetry(link: dict[str, Any]) -> str:
    """The broker link for a person: state, broker, since when, and why it is not up."""
    text = f"{link.get('state', '?')} ({link.get('broker', '?')})"
    if isinstance(link.get("since"), int | float):
        text += f" since {_when(link['since'])}"
    if link.get("reason"):
        text += f": {link['reason']}"
    return text


def format_alarm(alarm: dict[str, Any]) -> str:
    """One alarm for a person: id, severity, active or cleared, acknowledged by whom, message."""
    state = "active" if alarm.get("active") else "cleared"
    acked = f"acked by {alarm['acked_by']}" if alarm.get("acked_by") else "not acked"
    raised = f" since {_when(alarm['raised_ts'])}" if isinstance(alarm.get("raised_ts"), int | float) else ""
    return (
        f"{alarm.get('id', '?')} [{alarm.get('severity', '?')}] {state}{raised}, {acked}: "
        f"{alarm.get('message', '')}"
    )


def _num(value: Any, spec: str = ".6g") -> str:
    return format(value, spec) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _format_spc_summary(summary: dict[str, Any]) -> str:
    text = (
        f"{summary.get('characteristic', '?')} ({summary.get('kind', '?')}, {summary.get('points', 0)} pts): "
        f"Cp {_num(summary.get('cp'), '.2f')} Cpk {_num(summary.get('cpk'), '.2f')}, "
        f"control [{_num(summary.get('lcl'))}, {_num(summary.get('ucl'))}], "
        f"spec [{_num(summary.get('lsl'))}, {_num(summary.get('usl'))}]"
    )
    last = summary.get("last_violation")
    if isinstance(last, dict):
        rules = ", ".join(str(r) for r in last.get("rules") or [])
        text += f"; last violation: rule {rules} at {last.get('label') or last.get('index', '?')}"
    return text


def format_chart(chart: dict[str, Any], *, title: str, last: int = 25) -> str:
    """A control chart's data (ChartData.to_dict()) as text: limits, spec, capability and the last points."""
    limits = chart.get("limits")
    given = chart.get("spec")
    spec: dict[str, Any] = given if isinstance(given, dict) else {}
    lines = [f"{title}: {chart.get('kind', '?')} chart, baseline {chart.get('baseline', '?')} points"]
    if isinstance(limits, dict):
        lines.append(
            f"  centre {_num(limits.get('centre'))}, control limits [{_num(limits.get('lcl'))}, "
            f"{_num(limits.get('ucl'))}], sigma {_num(limits.get('sigma'))}; range centre "
            f"{_num(limits.get('r_centre'))}, UCL {_num(limits.get('r_ucl'))}"
        )
    else:
        lines.append("  control limits: not yet (baseline filling)")
    lines.append(
        f"  spec [{_num(spec.get('lsl'))}, {_num(spec.get('usl'))}] nominal {_num(spec.get('nominal'))}; "
        f"Cp {_num(chart.get('cp'), '.2f')} Cpk {_num(chart.get('cpk'), '.2f')}"
    )
    points = [p for p in chart.get("points") or [] if isinstance(p, dict)]
    shown = points[-last:]
    lines.append(f"  points: {len(points)} kept, last {len(shown)}:")
    for p in shown:
        rules = ",".join(str(r) for r in p.get("violations") or [])
        flag = f"  rule {rules}" if rules else ""
        lines.append(
            f"  {p.get('index', '?'):>5}  {p.get('label', '')!s:<20} {_num(p.get('value'), '.6g'):>12}"
            f"  R {_num(p.get('range'), '.4g'):>8}{flag}"
        )
    return "".join(line + "\n" for line in lines)


def _format_recovery(recovery: dict[str, Any]) -> list[tuple[str, str]]:
    """What a restart after an unclean stop found: the interrupted changeover's steps, jobs not restored."""
    head = "after an unclean stop" if recovery.get("unclean") else "restored from the journal"
    rows = [("recovery", f"{head} (last state {recovery.get('last_state') or 'unknown'})")]
    changeover = recovery.get("changeover")
    if isinstance(changeover, dict):
        rows.append(
            (
                "",
                f"changeover {changeover.get('changeover_id', '?')} of job {changeover.get('job_id', '?')} "
                f"-> {changeover.get('to_variant', '?')}: {len(changeover.get('done') or [])} done, "
                f"{len(changeover.get('in_doubt') or [])} in doubt, "
                f"{len(changeover.get('not_started') or [])} not started",
            )
        )
        for step in changeover.get("steps") or []:
            if isinstance(step, dict):
                state = str(step.get("state", "?")).replace("_", " ")
                detail = f" ({step['detail']})" if step.get("detail") else ""
                rows.append(("", f"{step.get('id', '?')}: {state}{detail}"))
    for refused in recovery.get("refused_jobs") or []:
        if isinstance(refused, dict):
            rows.append(("", f"job {refused.get('job_id', '?')} not restored: {refused.get('reason', '')}"))
    return rows


def _format_proposal(proposed: dict[str, Any]) -> str:
    text = " ".join(str(i) for i in proposed.get("job_ids") or [])
    new, old = proposed.get("changeover_s"), proposed.get("queue_changeover_s")
    if isinstance(new, int | float) and isinstance(old, int | float):
        text += f" (changeover {new:.1f} s instead of {old:.1f} s: cellctl ctl apply-proposal)"
    return text


def _format_prompt(prompt: dict[str, Any]) -> str:
    """A step waiting for a person, with the command that answers it."""
    step = prompt.get("step", "?")
    text = f"{step}: {prompt.get('instruction', '')}"
    if prompt.get("kind") == "in_doubt":
        text += " (its outcome is unknown after a restart: confirm to run it again)"
    evidence = prompt.get("evidence")
    answer = f"cellctl ctl confirm {step}"
    if evidence:
        text += f"; scan: {evidence}"
        answer += " --evidence ID"
    return f"{text} -> {answer}"


def _format_oee(oee: dict[str, Any]) -> str:
    """The live OEE line: OEE = A x P x Q of the current shift so far."""

    def pct(key: str) -> str:
        value = oee.get(key)
        return f"{value * 100:.1f} %" if isinstance(value, int | float) else "n/a"

    window = oee.get("window") or {}
    name = window.get("name") if isinstance(window, dict) else None
    return (
        f"{pct('oee')} (availability {pct('availability')}, performance {pct('performance')}, quality "
        f"{pct('quality')})" + (f" in {name}" if name else "")
    )


def _format_qualification(qualification: dict[str, Any]) -> str:
    text = (
        f"{qualification.get('variant', '?')} in qualification (job {qualification.get('job_id', '?')}): "
        f"{qualification.get('passes', '?')}/{qualification.get('needed', '?')} consecutive passes"
    )
    if qualification.get("failures"):
        text += f", {qualification['failures']} failed"
    return text + " (cellctl ctl sign-off ends it)"


def _format_changeover(changeover: dict[str, Any]) -> str:
    text = f"{changeover.get('from_variant') or '?'} -> {changeover.get('to_variant') or '?'}"
    text += f", {changeover.get('done', '?')}/{changeover.get('total', '?')} steps done"
    if isinstance(changeover.get("planned_s"), int | float):
        text += f", planned {changeover['planned_s']:.1f} s"
    return text


def format_event(push: EventPush) -> str:
    """One event on one line: seq, time, stream/kind and its data."""
    event = push.event
    return f"{push.seq:>6} {_when(event.ts)} {event.stream}/{event.kind} {_compact(event.data)}"


def format_entry(entry: dict[str, Any]) -> str:
    """One journal entry on one line: id, time, kind, job and its data."""
    where = f"{entry.get('stream', '?')}/{entry.get('kind', '?')}"
    return (
        f"{entry.get('id', '?'):>6} {_when(entry.get('ts'))} {where}"
        f" {entry.get('job_id') or '-'} {_compact(entry.get('data', {}))}"
    )

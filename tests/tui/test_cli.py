"""``cellctl tui``: its help, and where it finds the controller (``ctl``'s --socket / --config resolution)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cellctl.cli import build_parser, main, tui_cmd


def test_tui_help_names_the_socket_and_config_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tui", "--help"])

    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "usage: cellctl tui" in out and "--socket" in out and "--config" in out and "1-6" in out


def test_tui_without_a_socket_or_config_is_a_usage_error() -> None:
    args = build_parser().parse_args(["tui"])
    err = io.StringIO()

    assert tui_cmd.run(args, err=err) == 2
    assert "--socket PATH or --config DIR" in err.getvalue()


def test_tui_with_a_broken_config_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "cell.yaml").write_text("cell: [not a cell\n")
    args = build_parser().parse_args(["tui", "--config", str(tmp_path)])
    err = io.StringIO()

    assert tui_cmd.run(args, err=err) == 2
    assert "configuration invalid" in err.getvalue()


def test_socket_and_config_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tui", "--socket", "a.sock", "--config", "config"])

    assert exited.value.code == 2 and "not allowed with" in capsys.readouterr().err

"""Reads a secret a cell file points at (the broker password file), refusing a file others may read."""

from __future__ import annotations

import stat
from pathlib import Path

__all__ = ["SecretFileError", "read_secret_file"]


class SecretFileError(ValueError):
    """A secret file is missing, unreadable, empty or readable by others; the message says which and why."""


def read_secret_file(path: Path) -> str:
    """The first line of ``path`` without its line end; SecretFileError when it cannot be used.

    Refused: a file anyone may read (mode o+r): a password every local account can read is no secret, and
    refusing it at start is cheaper than finding it in an audit. Group-readable is allowed so a service
    group (e.g. ``cellctl``) can hold it.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SecretFileError(f"password file {path} does not exist") from None
    except OSError as exc:
        raise SecretFileError(f"password file {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise SecretFileError(f"password file {path} is not a regular file")
    if mode & stat.S_IROTH:
        raise SecretFileError(
            f"password file {path} can be read by everyone (mode {stat.S_IMODE(mode):o}): chmod 600 or 640 it"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretFileError(f"password file {path} cannot be read: {exc}") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise SecretFileError(f"password file {path} is empty: the password is its first line")
    return lines[0]

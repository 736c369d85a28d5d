"""Files the gateway creates for itself (usage database, text log, audit log): owner-only.

They hold request metadata, key names and admin actions, so they are created ``0600`` (the
process's umask may make them stricter, never looser; ``UMask=0027`` in the systemd unit). A
file that exists already keeps the mode its owner gave it.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE = 0o600


def ensure_private_file(path: str | os.PathLike[str], mode: int = PRIVATE) -> None:
    """Create ``path`` (and its folder) with ``mode`` if it does not exist; leave it otherwise."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)
    os.close(fd)


def write_private_file(path: str | os.PathLike[str], text: str, mode: int = PRIVATE) -> None:
    """Replace ``path`` atomically with ``text``, created with ``mode`` (never readable by others
    at any moment: the temp file is created with it too)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)

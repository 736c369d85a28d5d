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

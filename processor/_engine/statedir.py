"""An instance's state dir: the lock that keeps a second process out, and the instance id kept in it."""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path
from typing import TextIO

from processor._errors import ConfigurationError


def lock_state_dir(root: Path) -> TextIO:
    """Hold an exclusive lock on the app's state dir for the life of the process: two instances on
    one state dir would share an instance id and fence each other."""
    f = (root / "LOCK").open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ConfigurationError(f"state dir {root} is in use by {holder}; every instance needs its own "
                                 "--state-dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    return f


def is_locked(root: Path) -> bool:
    """Whether a live process holds the lock of `root` (probed without keeping it)."""
    path = root / "LOCK"
    if not path.exists():
        return False
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def persisted_instance_id(root: Path) -> str:
    """The instance id kept in `root`, generated the first time it is asked for."""
    path = root / "instance-id"
    if not path.exists():
        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()


LAST_INSTANCE_FILE = "last-instance-id"


def record_instance_id(root: Path, instance_id: str) -> None:
    """Note which instance last ran on `root` (given with --instance-id or not): the CLI reading the
    stores of a state dir asks the consumer group whether that instance still owns their partitions."""
    path = root / LAST_INSTANCE_FILE
    if not path.exists() or path.read_text().strip() != instance_id:
        path.write_text(instance_id + "\n")

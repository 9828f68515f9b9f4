"""Whether a process of this host is alive: the one test every lock file of the package applies
(the run-directory lock, the shard publishing lock) before it takes over from a holder."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while `pid` names a process of this pid namespace (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

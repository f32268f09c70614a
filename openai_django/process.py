"""Who serves a call: this host and process, and whether a recorded holder is still alive.

A call's record names the process working on it (``Call.holder`` for a sync or stream call, the
attempt log for a background one), so that a process killed mid-call (kill -9, an OOM kill, a
crashed server) is noticed by whoever looks next on the same host at once, and by any host once
the call is older than ``STALE_RUNNING_AFTER``. A pid alone is not enough: pids are reused, so
the process's start time (from ``/proc``) is kept beside it.
"""

import os
import socket

HOST = socket.gethostname()


def _proc_stat(pid):
    """``(state, start time)`` of a process from ``/proc``, or ``None`` if it does not exist
    (or there is no ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()
    return fields[0], fields[19]


def _proc_start(pid):
    stat = _proc_stat(pid)
    return stat[1] if stat else None


_own = {}


def _own_start(pid):
    """This process's start time, read once per process (a forked child has a new pid)."""
    if pid not in _own:
        _own.clear()
        _own[pid] = _proc_start(pid)
    return _own[pid]


def _pid_alive(pid, start=None):
    if not isinstance(pid, int) or pid <= 0:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        if os.path.isdir("/proc"):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, started = stat
    if state in ("Z", "X"):
        return False  # killed, not yet reaped by its parent
    return start is None or started == start  # a different start time: the pid was reused



def identity():
    """``host:pid:start``: this process, as a call's holder."""
    pid = os.getpid()
    return f"{HOST}:{pid}:{_own_start(pid) or ''}"[:100]


def holder_state(holder):
    """``"alive"``, ``"dead"`` or ``"unknown"`` (another host, or no holder recorded) for a
    holder written by :func:`identity`."""
    host, _, rest = (holder or "").partition(":")
    pid, _, start = rest.partition(":")
    if not holder or host != HOST or not pid.isdigit():
        return "unknown"
    return "alive" if _pid_alive(int(pid), start or None) else "dead"

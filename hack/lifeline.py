"""Tie a child process to its owner: when the owner dies, however it dies (SIGKILL included), the child dies.

    proc = subprocess.Popen(lifeline.command(["kube-apiserver", ...]), start_new_session=True, ...)

`command(argv)` runs argv through this file: a tiny wrapper that forks a watchdog and then execs argv in its
own place, so the Popen's pid IS the real program (signals, exit codes and pid records stay as they were).
The watchdog leaves the wrapper's session and waits on two pidfds, the owner's and the child's: the child
exits first -> it exits too; the owner exits first -> it sends the child's process group (the child alone
when the child leads none) SIGTERM, then SIGKILL after a grace period. pidfds name one process, never a
later one with a recycled pid. Nothing depends on the child's cooperation, so Go binaries are covered too.

Why not PR_SET_PDEATHSIG: it fires when the parent THREAD that forked the child exits (a pytest fixture
started from a worker thread would kill its cluster early), it needs a preexec_fn (unsafe with threads) and
it is reset by a setuid exec. Why not polling the owner's pid: a pid is reused (pid_max is 32768 here).

Standard library only, Linux >= 5.3 (pidfd_open), so it runs before any virtualenv exists.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
from collections.abc import Sequence

GRACE_S = 2.0  # SIGTERM -> SIGKILL once the owner is gone: long enough to flush a log, short for tests


def start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat); 0 if gone.
    (pid, start time) names one process for good: a recycled pid comes with a later start time."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(") ", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return 0


def alive(pid: int, started: int | None = None) -> bool:
    """The process runs (a zombie is dead) and, when `started` is given, is the one that started then."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(") ", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return fields[0] != "Z" and (started is None or int(fields[19]) == started)


def command(argv: Sequence[str], owner: int | None = None, grace: float = GRACE_S) -> list[str]:
    """argv wrapped so that it dies with `owner` (default: this process)."""
    pid = os.getpid() if owner is None else owner
    # -I: no PYTHON* variables, no user site, no script directory on sys.path; -S: no site (a faster start).
    wrapper = [sys.executable, "-I", "-S", os.path.abspath(__file__)]
    return [*wrapper, str(pid), str(start_time(pid)), str(grace), "--", *argv]


# ---------------------------------------------------------------------------------------------- wrapper


def _pidfd(pid: int, started: int) -> int | None:
    """A pidfd for the process `pid` that started at `started`, or None if that process is gone."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if not alive(pid, started):  # checked after opening: the fd names the process we checked
        os.close(fd)
        return None
    return fd


def _watch(owner_fd: int, child_fd: int, child: int, grace: float) -> None:
    """The watchdog: out of the wrapper's session and stdio, wait for the first of the two to exit."""
    os.setsid()  # a signal to the owner's or the child's process group must not take the watchdog along
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # hold no pipe of the owner's open (subprocess.run(capture_output) waits for EOF)
        os.dup2(devnull, fd)
    poller = select.poll()
    poller.register(owner_fd, select.POLLIN)
    poller.register(child_fd, select.POLLIN)
    if child_fd in {fd for fd, _ in poller.poll()}:
        return  # the child exited on its own (or was stopped): nothing to do
    # The child leads a process group (start_new_session): its own processes go with it.
    group = os.getpgid(child) == child

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:  # the group's pid stays reserved while any member lives: it names no stranger
                os.killpg(child, sig)
            else:
                signal.pidfd_send_signal(child_fd, sig)

    send(signal.SIGTERM)
    select.select([child_fd], [], [], grace)
    send(signal.SIGKILL)  # whatever is left, the leader or members of its group


def main(argv: Sequence[str]) -> int:
    """`lifeline.py OWNER_PID OWNER_START GRACE -- PROGRAM ARGS...`: fork the watchdog, exec the program."""
    owner, owner_start, grace, sep, *program = argv
    if sep != "--" or not program:
        print("usage: lifeline.py OWNER_PID OWNER_START GRACE -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    owner_fd = _pidfd(int(owner), int(owner_start))
    if owner_fd is None:
        print(f"lifeline: owner {owner} is gone; not starting {program[0]}", file=sys.stderr)
        return 125
    child = os.getpid()  # after the exec below, this pid is the program's
    child_fd = os.pidfd_open(child)
    middle = os.fork()
    if middle == 0:  # double fork: the watchdog is not the program's child (the program would not reap it)
        try:
            if os.fork() == 0:
                _watch(owner_fd, child_fd, child, float(grace))
        finally:
            os._exit(0)
    os.waitpid(middle, 0)
    os.close(owner_fd)
    os.close(child_fd)
    try:
        os.execvp(program[0], program)
    except OSError as exc:
        print(f"lifeline: cannot run {program[0]}: {exc}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

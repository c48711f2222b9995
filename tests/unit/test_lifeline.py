"""hack/lifeline.py on real processes: a tied child dies with its owner (SIGKILL included), its process group
with it; a child that ignores SIGTERM is killed after the grace period; a child's own exit leaves nothing
behind. Each owner is a real Python process; no mocks."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import lifeline

HACK = Path(__file__).resolve().parents[2] / "hack"

# An owner that starts `argv` tied to itself (in a session of its own or not), prints its pid, then waits.
OWNER = """
import json, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
import lifeline
argv, session = json.loads(sys.argv[2]), sys.argv[3] == "1"
proc = subprocess.Popen(lifeline.command(argv, grace=0.5), start_new_session=session)
time.sleep(0.3)  # past the exec: the pid is the program's now
print(proc.pid, flush=True)
time.sleep(600)
"""


def _owner_of(argv: str, session: bool) -> tuple[subprocess.Popen[str], int]:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(HACK), argv, "1" if session else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    return owner, int(owner.stdout.readline())


def _sigkill(owner: subprocess.Popen[str]) -> None:
    owner.kill()
    owner.wait()
    assert owner.stdout is not None
    owner.stdout.close()


def _gone_within(pids: list[int], seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not any(lifeline.alive(p) for p in pids):
            return True
        time.sleep(0.02)
    return False


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split()]


def test_child_in_its_own_session_dies_with_sigkilled_owner_group_and_all() -> None:
    owner, child = _owner_of('["sh", "-c", "trap \\"\\" TERM; sleep 300 & wait"]', session=True)
    grandchild = _children(child)
    assert len(grandchild) == 1 and lifeline.alive(child)
    assert Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"sh\0")  # the program, not the wrapper
    _sigkill(owner)
    assert not _gone_within([child, *grandchild], 0.3), "SIGTERM is ignored: it must wait out the grace"
    assert _gone_within([child, *grandchild], 3.0)


def test_child_in_the_owners_group_dies_with_sigkilled_owner() -> None:
    owner, child = _owner_of('["sleep", "300"]', session=False)
    started = lifeline.start_time(child)
    _sigkill(owner)
    assert _gone_within([child], 2.0)
    assert not lifeline.alive(child, started)


def test_child_exit_is_passed_through_and_leaves_no_watchdog() -> None:
    done = subprocess.run(
        lifeline.command(["sh", "-c", "echo out; exit 7"]), capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout) == (7, "out\n")  # returned at once: no watchdog holds the pipe
    missing = subprocess.run(
        lifeline.command(["no-such-program-x"]), capture_output=True, text=True, check=False
    )
    assert missing.returncode == 127 and "cannot run no-such-program-x" in missing.stderr


def test_an_owner_already_gone_starts_nothing() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    argv = lifeline.command(["sleep", "300"], owner=gone.pid)
    argv[argv.index(str(gone.pid)) + 1] = "12345"  # whatever it recorded, the process is not there
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    assert done.returncode == 125 and "is gone; not starting sleep" in done.stderr


def test_start_time_tells_a_reused_pid_apart() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        started = lifeline.start_time(proc.pid)
        assert started > 0 and lifeline.alive(proc.pid, started)
        assert not lifeline.alive(proc.pid, started - 1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not lifeline.alive(proc.pid) and lifeline.start_time(proc.pid) == 0

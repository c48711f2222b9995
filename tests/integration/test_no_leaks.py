"""No process outlives its owner: a control plane whose owner is SIGKILLed goes with it, and `down` stops a
stray recorded by an earlier run while a recorded pid that now names another process is left alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lifeline
from supervisor import register, registered

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}

# The owner: starts a whole control plane the way the test fixtures do, says where, then waits to be killed.
OWNER = """
import sys, time
from pathlib import Path
sys.path.insert(0, "hack")
from localcluster import LocalCluster, Tools
cluster = LocalCluster(workdir=Path(sys.argv[1]), tools=Tools.from_cache())
cluster.start()
print("up", flush=True)
time.sleep(600)
"""


def _watchdogs_of(owner: int) -> list[int]:
    """Live lifeline watchdogs whose command line names `owner` as theirs."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"lifeline.py") for a in argv) and str(owner).encode() in argv:
                found.append(int(entry.name))
    return [pid for pid in found if lifeline.alive(pid)]


def _localcluster(*args: str) -> subprocess.CompletedProcess[str]:
    """`hack/localcluster.py ARGS` as a user runs it, from the repository."""
    return subprocess.run(
        [sys.executable, "hack/localcluster.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sigkilled_owner_takes_its_control_plane_along(tmp_path: Path) -> None:
    env = {**os.environ, "TRTREFIT_RUNS": str(tmp_path / "runs")}  # its registration is not the user's
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True, env=env
    )
    assert owner.stdout is not None
    try:
        assert owner.stdout.readline().strip() == "up", "the owner did not start its control plane"
        records = json.loads((tmp_path / "pids.json").read_text())
        recorded = {name: (r[0], r[1]) for name, r in records.items()}
        assert set(recorded) == COMPONENTS
        assert all(lifeline.alive(pid, started) for pid, started in recorded.values())
        assert _watchdogs_of(owner.pid), "no watchdog names the owner"
    finally:
        owner.send_signal(signal.SIGKILL)  # no handler, no atexit, no finally in the owner runs
        owner.wait()
        owner.stdout.close()
    killed_at = time.monotonic()
    while time.monotonic() - killed_at < 10 and any(lifeline.alive(*r) for r in recorded.values()):
        time.sleep(0.05)
    left = {name for name, r in recorded.items() if lifeline.alive(*r)}
    assert not left, f"still running 10 s after their owner was SIGKILLed: {left}"
    took = time.monotonic() - killed_at
    assert took < 6, f"the control plane took {took:.1f} s to go"  # SIGTERM, 2 s grace, SIGKILL
    assert not any(Path(f"/proc/{pid}").exists() and lifeline.alive(pid) for pid, _ in recorded.values())
    time.sleep(0.2)
    assert not _watchdogs_of(owner.pid), "a watchdog outlived its work"


def test_down_stops_a_recorded_stray_and_spares_a_reused_pid(tmp_path: Path) -> None:
    stray = subprocess.Popen(["sleep", "300"], start_new_session=True)
    stranger = subprocess.Popen(["sleep", "301"], start_new_session=True)
    try:
        # An earlier run's record: the stray as it was recorded; the stranger's pid with an older start time,
        # as if the recorded process had died and the kernel had given its pid to this unrelated one.
        records = {
            "etcd": [stray.pid, lifeline.start_time(stray.pid)],
            "kube-apiserver": [stranger.pid, lifeline.start_time(stranger.pid) - 1],
        }
        (tmp_path / "pids.json").write_text(json.dumps(records))
        done = _localcluster("down", "--dir", str(tmp_path))
        assert done.returncode == 0, done.stderr
        assert "stopped 1 processes (etcd)" in done.stderr
        assert stray.wait(timeout=5) == -signal.SIGTERM
        assert stranger.poll() is None and lifeline.alive(stranger.pid)
        assert not (tmp_path / "pids.json").exists()
    finally:
        for proc in (stray, stranger):
            proc.kill()
            proc.wait()


def _sleep() -> tuple[subprocess.Popen[bytes], list[int]]:
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    return proc, [proc.pid, lifeline.start_time(proc.pid)]


def test_down_strays_stops_only_what_lost_its_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTREFIT_RUNS", str(tmp_path / "runs"))
    gone = subprocess.Popen(["sleep", "0.01"])
    gone_owner = [gone.pid, lifeline.start_time(gone.pid)]
    gone.wait()
    me = [os.getpid(), lifeline.start_time(os.getpid())]
    orphan, orphan_rec = _sleep()
    owned, owned_rec = _sleep()
    detached, detached_rec = _sleep()
    dirs = {
        "orphaned": [*orphan_rec, *gone_owner],
        "owned": [*owned_rec, *me],
        "detached": [*detached_rec, 0, 0],
    }
    try:
        for name, record in dirs.items():
            (tmp_path / name).mkdir()
            (tmp_path / name / "pids.json").write_text(json.dumps({"etcd": record}))
            register(tmp_path / name)
        done = _localcluster("down", "--strays")
        assert done.returncode == 0, done.stderr
        assert f"stopped strays in {tmp_path / 'orphaned'}: etcd" in done.stderr
        assert "stopped 1 stray processes" in done.stderr
        assert orphan.wait(timeout=5) == -signal.SIGTERM
        assert owned.poll() is None and detached.poll() is None  # a live owner's; one up on purpose
        # The orphaned directory has nothing left alive: forgotten. The others are still looked at.
        assert sorted(p.name for p in registered()) == ["detached", "owned"]
    finally:
        for proc in (orphan, owned, detached):
            proc.kill()
            proc.wait()

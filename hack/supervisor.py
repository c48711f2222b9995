"""Background processes of one state directory, recorded so that no run leaves one behind.

Each process is recorded in <dir>/pids.json as name -> [pid, start time, owner pid, owner start time]
(start times: field 22 of /proc/<pid>/stat, so a recycled pid is never mistaken for a recorded process;
owner 0, 0: detached on purpose). A tied process dies with its owner through hack/lifeline.py; should one
survive anyway (its watchdog was killed too), it is a *stray*: recorded, alive, its owner gone. Every state
directory is registered under runs_dir(), so `localcluster.py down --strays` (and `make clean`) finds strays
of any earlier run, in any directory, and stops only those: a live owner's processes are left alone.

Standard library only, so it runs before any virtualenv exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lifeline
from lifeline import alive, start_time


class ClusterError(RuntimeError):
    """One clear, actionable message about why the control plane could not start or stop."""


def runs_dir() -> Path:
    """Where state directories are registered: shared by every checkout of this machine's user."""
    if "TRTREFIT_RUNS" in os.environ:
        return Path(os.environ["TRTREFIT_RUNS"])
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "trtrefit" / "runs"


def _registration(workdir: Path) -> Path:
    return runs_dir() / hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:20]


def register(workdir: Path) -> None:
    """Note that processes are started from `workdir`, for stop_strays to look there later."""
    entry = _registration(workdir)
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text(str(workdir.resolve()))


def registered() -> list[Path]:
    """Every state directory a Supervisor has started a process from (and not yet found empty)."""
    if not runs_dir().is_dir():
        return []
    return [Path(entry.read_text().strip()) for entry in sorted(runs_dir().iterdir()) if entry.is_file()]


def stop_strays(grace: float = 3.0) -> dict[Path, dict[str, int]]:
    """Stop every registered process whose owner is gone; forget directories with nothing left alive."""
    stopped = {}
    for workdir in registered():
        supervisor = Supervisor(workdir)
        if strays := supervisor.stop_strays(grace):
            stopped[workdir] = strays
        if not supervisor.running():
            _registration(workdir).unlink(missing_ok=True)
    return stopped


def _signal_group(pid: int, sig: int) -> None:
    """Signal a recorded process and its group (it leads one: started in a session of its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


@dataclass
class Supervisor:
    """Background processes started from one state directory. Each runs in a session of its own (killpg
    reaches its children), logs to <dir>/logs/<name>.log and is recorded in <dir>/pids.json. Each dies with
    the process that started it (hack/lifeline.py, SIGKILL included) unless `detached`: `localcluster.py up`
    and the demo leave theirs running on purpose, for `down` to stop."""

    workdir: Path
    detached: bool = False
    # Handles of the processes this object started, so stop() can reap them.
    _procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def pid_file(self) -> Path:
        return self.workdir / "pids.json"

    def log_file(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> int:
        self.log_file(name).parent.mkdir(parents=True, exist_ok=True)
        register(self.workdir)
        with self.log_file(name).open("ab") as log:
            proc = subprocess.Popen(
                list(args) if self.detached else lifeline.command(args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.workdir,
                env=env,
            )
        self._procs[proc.pid] = proc
        owner = [0, 0] if self.detached else [os.getpid(), start_time(os.getpid())]
        saved = self._saved()
        saved[name] = [proc.pid, start_time(proc.pid), *owner]
        self.pid_file.write_text(json.dumps(saved))
        return proc.pid

    def running(self) -> dict[str, int]:
        """The recorded processes that are still alive and still the ones recorded."""
        return {name: rec[0] for name, rec in self._saved().items() if rec[0] and alive(rec[0], rec[1])}

    def strays(self) -> dict[str, int]:
        """Running processes whose recorded owner is gone (a detached one has no owner: never a stray)."""
        saved = self._saved()
        return {
            name: pid
            for name, pid in self.running().items()
            if len(saved[name]) == 4 and saved[name][2] and not alive(saved[name][2], saved[name][3])
        }

    def check_alive(self) -> None:
        """Raise with the tail of its log when a recorded process exited (one stopped on purpose did not)."""
        running = self.running()
        for name, rec in self._saved().items():
            if rec[0] and name not in running:
                log = self.log_file(name)
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
                raise ClusterError(f"{name} exited during start-up; last lines of {log}:\n{tail}")

    def stop(self, grace: float = 10.0) -> dict[str, int]:
        """SIGTERM every process (newest first), SIGKILL what is left after `grace` seconds."""
        pids = self._stop(self.running(), grace)
        for proc in self._procs.values():  # ours, dead or alive: reap them
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._procs.clear()
        self.pid_file.unlink(missing_ok=True)
        _registration(self.workdir).unlink(missing_ok=True)
        return pids

    def stop_strays(self, grace: float = 3.0) -> dict[str, int]:
        """Stop the strays only; the records stay (a live owner may still use the directory)."""
        return self._stop(self.strays(), grace)

    def stop_one(self, name: str, grace: float = 10.0) -> None:
        """SIGTERM one recorded process (and its group), SIGKILL after `grace` s; wait until it is gone. Its
        record stays, as [0, 0], so a later spawn of the same name keeps its place in the stop order."""
        saved = self._saved()
        if name not in saved:
            raise ClusterError(f"no process named {name!r} was started from {self.workdir}")
        pid = self.running().get(name)
        if pid:
            self._stop({name: pid}, grace)
            proc = self._procs.pop(pid, None)
            if proc is not None:
                proc.wait()
            while alive(pid):  # not ours to reap: wait for the kill to land
                time.sleep(0.05)
        saved[name] = [0, 0]
        self.pid_file.write_text(json.dumps(saved))

    @staticmethod
    def _stop(pids: dict[str, int], grace: float) -> dict[str, int]:
        for pid in reversed(list(pids.values())):
            _signal_group(pid, signal.SIGTERM)
        end = time.monotonic() + grace
        while time.monotonic() < end and any(alive(p) for p in pids.values()):
            time.sleep(0.05)
        for pid in pids.values():
            _signal_group(pid, signal.SIGKILL)
        return pids

    def _saved(self) -> dict[str, list[int]]:
        if not self.pid_file.is_file():
            return {}
        saved: dict[str, list[int]] = json.loads(self.pid_file.read_text())
        return saved

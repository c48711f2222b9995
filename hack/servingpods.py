"""The fake kubelet's serving pods: a ReplicaSet's pod running `trtrefit serve`, as a local process.

What a kubelet does for such a pod, and how this module does it on one machine:
- the pod's network namespace gets an IP: here a loopback address 127.0.0.N of its own (Linux routes all of
  127/8 to lo), written as status.podIP/podIPs; the server binds it (`--host 127.0.0.N`). N is unique among
  the live pods of every fake kubelet on this machine (a lock file per address, held while the pod lives);
- the container's environment comes from the pod spec only (env, valueFrom, envFrom resolved through the
  API) plus a few basics (PATH, HOME, HOSTNAME); nothing leaks from the process that runs the kubelet. A
  referenced ConfigMap or Secret that is missing keeps the container waiting (CreateContainerConfigError);
- readiness comes from probing the container (its readinessProbe's httpGet, else the Open Inference
  Protocol's /v2/health/ready) and is written as the Ready condition and containerStatuses[0].ready;
- a container that exits is started again (restartCount + 1), after a back-off that is shorter than a real
  kubelet's (1 s doubling to 16 s instead of 10 s to 5 min) so tests see it;
- pod deleted -> SIGTERM, SIGKILL to the process group after terminationGracePeriodSeconds;
- the API server away (hack/apiretry.py) -> the container keeps running and being probed; the latest status
  is written once the API answers again, retried with a capped back-off.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

import lifeline
from apiretry import REQUEST_TIMEOUT, Backoff, Outage, transient
from containerenv import ContainerConfigError, resolve_argv, resolve_env
from trtrefit.api.serving import DEFAULT_PORT

SERVE_SUBCOMMAND = "serve"
READY_PATH = "/v2/health/ready"  # the Open Inference Protocol's readiness, probed when the pod sets no probe
IMPLICIT_PROBE_PERIOD_S = 0.5
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0)
TICK_S = 0.1
LOCK_DIR = Path(tempfile.gettempdir()) / "trtrefit-fakekubelet-ips"


def is_serving_pod(pod: Any) -> bool:
    """A pod to run as a server: owned by a ReplicaSet, scheduled, not deleted, running `trtrefit serve`."""
    owners = pod.metadata.owner_references or []
    if not any(o.kind == "ReplicaSet" for o in owners) or not pod.spec.node_name:
        return False
    if pod.metadata.deletion_timestamp is not None:
        return False
    argv = resolve_argv(pod.spec.containers[0], None)
    return Path(argv[0]).name == "trtrefit" and argv[1:2] == [SERVE_SUBCOMMAND]


def with_host(argv: list[str], ip: str) -> list[str]:
    """The command line with the server bound to the pod's own address (a container binds 0.0.0.0)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--host":
            skip = True
        elif not arg.startswith("--host="):
            out.append(arg)
    return [*out, "--host", ip]


@dataclass(frozen=True)
class Probe:
    """Where and how often to ask the container whether it is ready."""

    url: str
    period_s: float
    initial_delay_s: float = 0.0
    timeout_s: float = 1.0
    failure_threshold: int = 3


def _served_port(argv: list[str]) -> int:
    for i, arg in enumerate(argv):
        if arg == "--port" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
    return DEFAULT_PORT


def readiness_probe(container: Any, ip: str) -> Probe:
    """The container's readinessProbe (httpGet, a named port resolved), else /v2/health/ready on its port."""
    probe = container.readiness_probe
    if probe is None or probe.http_get is None:
        port = _served_port(resolve_argv(container, None))
        return Probe(f"http://{ip}:{port}{READY_PATH}", IMPLICIT_PROBE_PERIOD_S)
    get = probe.http_get
    port = get.port
    if isinstance(port, str) and not port.isdigit():
        named = [p.container_port for p in container.ports or [] if p.name == port]
        if not named:
            raise ContainerConfigError(f"readinessProbe: the container has no port named {port!r}")
        port = named[0]
    path = get.path or "/"
    return Probe(
        url=f"{(get.scheme or 'HTTP').lower()}://{get.host or ip}:{int(port)}{path}",
        period_s=float(probe.period_seconds or 10),
        initial_delay_s=float(probe.initial_delay_seconds or 0),
        timeout_s=float(probe.timeout_seconds or 1),
        failure_threshold=int(probe.failure_threshold or 3),
    )


def probe_ok(probe: Probe) -> bool:
    """A kubelet's httpGet check: any status from 200 to 399 within the timeout."""
    try:
        with urllib.request.urlopen(probe.url, timeout=probe.timeout_s) as resp:
            return 200 <= int(resp.status) < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


class IpPool:
    """Loopback addresses 127.0.0.2-254, each held through an exclusive lock on a file of its own, so two
    fake kubelets on one machine (two test sessions, the demo) never hand out the same one."""

    def __init__(self, lock_dir: Path = LOCK_DIR) -> None:
        self.lock_dir = lock_dir
        self._held: dict[str, IO[bytes]] = {}
        self._mutex = threading.Lock()

    def acquire(self) -> str:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with self._mutex:
            for n in range(2, 255):
                ip = f"127.0.0.{n}"
                if ip in self._held:
                    continue
                handle = (self.lock_dir / f"{ip}.lock").open("ab")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                self._held[ip] = handle
                return ip
        raise RuntimeError(f"no free loopback address left in 127.0.0.2-254 (locks in {self.lock_dir})")

    def release(self, ip: str) -> None:
        with self._mutex:
            handle = self._held.pop(ip, None)
        if handle is not None:
            handle.close()  # drops the lock


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class ContainerState:
    """What the kubelet knows about the pod's one container; `status()` is its pod status."""

    name: str
    image: str
    ip: str
    host_ip: str
    started_at: str
    running_since: str | None = None
    waiting: tuple[str, str] | None = None  # (reason, message)
    last_terminated: dict[str, Any] | None = None
    ready: bool = False
    restart_count: int = 0
    ready_since: str = ""

    def status(self) -> dict[str, Any]:
        state: dict[str, Any]
        if self.running_since is not None:
            state = {"running": {"startedAt": self.running_since}}
        else:
            reason, message = self.waiting or ("ContainerCreating", "")
            state = {"waiting": {"reason": reason, "message": message}}
        container: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.ready,
            "started": self.running_since is not None,
            "restartCount": self.restart_count,
            "state": state,
        }
        if self.last_terminated is not None:
            container["lastState"] = {"terminated": self.last_terminated}
        ready = "True" if self.ready else "False"
        since = self.ready_since or self.started_at
        return {
            "phase": "Running" if self.running_since is not None or self.restart_count else "Pending",
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.started_at,
            "conditions": [
                {
                    "type": "PodReadyToStartContainers",
                    "status": "True",
                    "lastTransitionTime": self.started_at,
                },
                {"type": "Initialized", "status": "True", "lastTransitionTime": self.started_at},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": since},
                {"type": "Ready", "status": ready, "lastTransitionTime": since},
            ],
            "containerStatuses": [container],
        }


class ServingPod:
    """One serving pod's container as a local process, for as long as the pod lives (a thread of its own)."""

    def __init__(
        self,
        api: client.ApiClient,
        pod: Any,
        ips: IpPool,
        bin_dir: Path,
        log_dir: Path,
        *,
        outage: Outage | None = None,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.pod, self.ips, self.bin_dir = pod, ips, bin_dir
        self.log = log_dir / f"{pod.metadata.namespace}_{pod.metadata.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.outage = outage or Outage()
        self._unwritten: ContainerState | None = None  # a status whose write failed, tried again later
        self._backoff = Backoff()
        self._retry_at = 0.0  # monotonic time of the next attempt to write _unwritten
        self._deleted = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"pod-{pod.metadata.name}")

    @property
    def uid(self) -> str:
        return str(self.pod.metadata.uid)

    def start(self) -> None:
        self.thread.start()

    def delete(self) -> None:
        """The pod is gone or going: stop the container (SIGTERM, then SIGKILL after the grace period)."""
        self._deleted.set()

    # -- the pod's life ------------------------------------------------------------------------------

    def _run(self) -> None:
        container = self.pod.spec.containers[0]
        ip = self.ips.acquire()
        state = ContainerState(container.name, container.image, ip, self.pod.status.host_ip or "127.0.0.1",
                               started_at=_now())  # fmt: skip
        try:
            with tempfile.TemporaryDirectory(prefix=f"pod-{self.pod.metadata.name}-") as home:
                self._live(state, container, Path(home))
        except ApiException as exc:
            if exc.status != 404:  # a pod deleted under us is the normal end
                raise
        finally:
            self._terminate()
            self.ips.release(ip)

    def _live(self, state: ContainerState, container: Any, home: Path) -> None:
        failures, probe, next_probe = 0, readiness_probe(container, state.ip), 0.0
        while not self._deleted.is_set():
            if self.process is None:
                if not self._start_container(state, container, home):
                    continue
                next_probe = time.monotonic() + probe.initial_delay_s
            elif (code := self.process.poll()) is not None:
                self._exited(state, code)
                continue
            elif time.monotonic() >= next_probe:
                next_probe = time.monotonic() + probe.period_s
                ok = probe_ok(probe)
                failures = 0 if ok else failures + 1
                ready = ok or (state.ready and failures < probe.failure_threshold)
                if ready != state.ready:
                    state.ready, state.ready_since = ready, _now()
                    self._write(state)
            if self._unwritten is not None and time.monotonic() >= self._retry_at:
                self._write(self._unwritten)
            self._deleted.wait(TICK_S)

    def _start_container(self, state: ContainerState, container: Any, home: Path) -> bool:
        """Resolve the environment and start the process; False (status written, waited) when it cannot."""
        try:
            env = resolve_env(
                self.core, self.pod, container, home=home, bin_dir=self.bin_dir, pod_ip=state.ip
            )
            argv = with_host(resolve_argv(container, self.bin_dir, env), state.ip)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            if not transient(exc):
                raise
            self.outage.failed(exc)  # the ConfigMap or Secret could not be read: try again later
            self._deleted.wait(self._backoff.delay())
            return False
        except ContainerConfigError as exc:
            if state.waiting != ("CreateContainerConfigError", str(exc)):
                state.waiting = ("CreateContainerConfigError", str(exc))
                self._write(state)
            self._deleted.wait(1.0)  # the kubelet retries as the pod is re-synced
            return False
        with self.log.open("ab") as out:
            out.write(f"--- {_now()} start #{state.restart_count}: {' '.join(argv)}\n".encode())
            out.flush()
            # Tied to this process (the kubelet stand-in): a SIGKILLed fakekubelet leaves no server behind.
            self.process = subprocess.Popen(lifeline.command(argv), env=env, cwd=home, stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)  # fmt: skip
        state.waiting, state.running_since, state.ready = None, _now(), False
        self._write(state)
        return True

    def _exited(self, state: ContainerState, code: int) -> None:
        """The container exited: record it, wait out the back-off, and let the loop start it again."""
        code = 128 - code if code < 0 else code  # killed by signal N: the runtime reports 128 + N
        state.last_terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": state.running_since,
            "finishedAt": _now(),
        }
        backoff = BACKOFF_S[min(state.restart_count, len(BACKOFF_S) - 1)]
        self.process, state.running_since, state.ready = None, None, False
        state.waiting = ("CrashLoopBackOff", f"back-off {backoff:.0f}s restarting failed container")
        state.restart_count += 1
        self._write(state)
        self._deleted.wait(backoff)

    def _terminate(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        grace = self.pod.spec.termination_grace_period_seconds
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30 if grace is None else grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what is left of the container's processes
        proc.wait()

    def _write(self, state: ContainerState) -> None:
        """Patch the pod's status; a transient API error (or a conflict) leaves it to the loop to write
        again after a capped back-off, whatever the state is by then."""
        self._unwritten = state
        if self._deleted.is_set():
            return
        try:
            self.core.patch_namespaced_pod_status(
                self.pod.metadata.name,
                self.pod.metadata.namespace,
                {"status": state.status()},
                _request_timeout=REQUEST_TIMEOUT,
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            conflict = isinstance(exc, ApiException) and exc.status == 409
            if not (transient(exc) or conflict):
                raise  # 404: the pod is gone, which ends its thread
            if not conflict:
                self.outage.failed(exc)
            self._retry_at = time.monotonic() + self._backoff.delay()
            return
        self.outage.answered()
        self._backoff.reset()
        self._unwritten = None

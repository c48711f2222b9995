"""Play the kubelet on the kwok nodes: run pods' real container commands as local processes.

kwok simulates nodes but runs no containers. For the e2e suite, the demo and the benchmarks this module does
what a kubelet would, reading every pod spec from the API (nothing from the operator's memory):

- refit pods (owned by a Job, running `trtrefit refit`): the command runs once (the CPU `exported` backend)
  and the pod's status is written back: the container's exit code, its termination message (the file at
  terminationMessagePath, or with `FallbackToLogsOnError` the tail of its output when the file is empty and
  the container failed) and the phase;
- serving pods (owned by a ReplicaSet, running `trtrefit serve`): a long-lived process on a loopback address
  of its own, probed for readiness, restarted when it exits, stopped when the pod is deleted
  (hack/servingpods.py). kwok leaves both kinds alone (hack/kwok/stages.yaml); other pods are kwok's.

Both start from the environment the pod spec gives (hack/containerenv.py), never this process's.

Like a kubelet it rides out API server outages (hack/apiretry.py): every call is retried with a capped
back-off on a lost connection, 429 or 5xx, one log line says the API went away and one that it is back, and
what happened meanwhile (a refit pod that finished, a serving pod that became ready) is written then.

One deviation from a real kubelet, because there is no container filesystem to bind-mount into: the
termination-message file is a temp file whose path the process receives in the environment variable
TRTREFIT_TERMINATION_LOG (the worker writes there instead of /dev/termination-log), just as a kubelet
injects its own variables (KUBERNETES_SERVICE_HOST, ...).

    python hack/fakekubelet.py --kubeconfig K --namespace NS [--namespace NS2] [--log-dir D]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

import lifeline
from apiretry import REQUEST_TIMEOUT, Backoff, Outage, StoppedError, retry, transient
from containerenv import ENTRYPOINT, ContainerConfigError, resolve_argv, resolve_env
from servingpods import IpPool, ServingPod, is_serving_pod

__all__ = ["FakeKubelet", "is_refit_pod", "resolve_argv", "termination_message", "write_terminated"]

TERMINATION_ENV = "TRTREFIT_TERMINATION_LOG"
MAX_MESSAGE_BYTES = 4096  # the kubelet's limit for one container's termination message
FALLBACK_LOG_BYTES = 2048  # and for the log tail used by FallbackToLogsOnError
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


def is_refit_pod(pod: Any) -> bool:
    """A pod to run: owned by a Job, scheduled, not finished, its container runs `trtrefit refit`."""
    owners = pod.metadata.owner_references or []
    if not any(o.kind == "Job" for o in owners) or not pod.spec.node_name:
        return False
    if pod.metadata.deletion_timestamp is not None or pod.status.phase in ("Succeeded", "Failed"):
        return False
    argv = resolve_argv(pod.spec.containers[0], None)
    return Path(argv[0]).name == ENTRYPOINT and "refit" in argv[1:2]


def termination_message(file_text: str, output: str, exit_code: int, policy: str | None) -> str:
    """What the kubelet reports: the file's content, else (FallbackToLogsOnError, failed) the log tail."""
    message = file_text[-MAX_MESSAGE_BYTES:]
    if not message.strip() and exit_code != 0 and policy == "FallbackToLogsOnError":
        message = output.encode()[-FALLBACK_LOG_BYTES:].decode(errors="replace")
    return message


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeKubelet:
    """Runs the refit pods (once each, a thread each) and the serving pods (for as long as they live) of
    `namespaces`, scheduled on kwok's nodes."""

    api: Any
    namespaces: Sequence[str]
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fakekubelet-logs-")))
    ips: IpPool = field(default_factory=IpPool)
    _seen: set[str] = field(default_factory=set)
    _started: set[str] = field(default_factory=set)  # refit pods whose process has been started
    _serving: dict[str, ServingPod] = field(default_factory=dict)
    _kwok_nodes: dict[str, bool] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    # poll_once (on the serve thread) and stop (on the caller's) both change the pods: one at a time, so a
    # poll in flight when stop() runs cannot start a second process (on a second address) for a pod.
    _pods_lock: threading.Lock = field(default_factory=threading.Lock)
    outage: Outage = field(default_factory=Outage)  # the API's reachability, shared by every pod's thread

    def poll_once(self) -> None:
        with self._pods_lock:
            if not self._stop.is_set():
                self._poll_once()

    def _poll_once(self) -> None:
        core = client.CoreV1Api(self.api)
        live: set[str] = set()
        for ns in self.namespaces:
            for pod in core.list_namespaced_pod(ns, _request_timeout=REQUEST_TIMEOUT).items:
                uid = pod.metadata.uid
                if is_serving_pod(pod) and self._on_kwok_node(core, pod.spec.node_name):
                    live.add(uid)
                    if uid not in self._serving:
                        self._serving[uid] = ServingPod(
                            self.api, pod, self.ips, self.bin_dir, self.log_dir, outage=self.outage
                        )
                        self._serving[uid].start()
                elif uid not in self._seen and is_refit_pod(pod):
                    self._seen.add(uid)
                    thread = threading.Thread(target=self.run_pod, args=(pod,), daemon=True)
                    thread.start()
                    self._threads.append(thread)
        # Every list answered: a serving pod missing from them (or being deleted) is gone.
        for uid in set(self._serving) - live:
            self._serving.pop(uid).delete()

    def runs(self, uid: str) -> bool:
        """Whether the refit pod with this uid has had its process started (running or done)."""
        return uid in self._started

    def serving_pod(self, uid: str) -> ServingPod | None:
        """The local process behind a serving pod, by the pod's uid."""
        return self._serving.get(uid)

    def serve(self, interval: float = 0.3) -> None:
        """Poll until stopped. While the API is away the pods it runs keep running and nothing is deleted: a
        poll that does not finish decides nothing."""
        backoff = Backoff()
        while not self._stop.is_set():
            try:
                self.poll_once()
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                if transient(exc):
                    self.outage.failed(exc)
                    self._stop.wait(backoff.delay())
                    continue
                # a namespace being deleted (403/404), a conflict: the next poll sees it settled
                if not (isinstance(exc, ApiException) and exc.status in (403, 404, 409)):
                    raise
            self.outage.answered()
            backoff.reset()
            self._stop.wait(interval)

    @contextlib.contextmanager
    def running(self) -> Iterator[FakeKubelet]:
        """Serve on a thread of its own for the duration of the block, then stop everything it started."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        thread = threading.Thread(target=self.serve, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop()
            thread.join(30)

    def pod_logs(self, tail_chars: int = 6000) -> str:
        """The tail of every pod's output, for a failed test's report."""
        return "".join(
            f"\n--- {log.name} ---\n{log.read_text(errors='replace')[-tail_chars:]}\n"
            for log in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self, timeout: float = 60.0) -> None:
        """Stop polling, stop every serving process (SIGTERM, then SIGKILL) and wait for the threads."""
        with self._pods_lock:
            self._stop.set()
            pods = list(self._serving.values())
            self._serving.clear()
        for pod in pods:
            pod.delete()
        for pod in pods:
            pod.thread.join(timeout)
        for thread in self._threads:
            thread.join(timeout)

    def _on_kwok_node(self, core: Any, node_name: str) -> bool:
        if node_name not in self._kwok_nodes:
            node = core.read_node(node_name, _request_timeout=REQUEST_TIMEOUT)
            annotations = node.metadata.annotations or {}
            self._kwok_nodes[node_name] = annotations.get(KWOK_NODE_ANNOTATION) == "fake"
        return self._kwok_nodes[node_name]

    def run_pod(self, pod: Any) -> None:
        core = client.CoreV1Api(self.api)
        container = pod.spec.containers[0]
        started = _now()
        with tempfile.TemporaryDirectory(prefix="fakekubelet-") as tmp:
            term_file = Path(tmp) / "termination-log"
            term_file.touch()
            try:
                env = retry(
                    lambda: resolve_env(
                        core,
                        pod,
                        container,
                        home=Path(tmp),
                        bin_dir=self.bin_dir,
                        pod_ip=pod.status.pod_ip or "",
                    ),
                    self.outage,
                    self._stop,
                )
            except ContainerConfigError as exc:  # a refit pod has no later chance: report it as failed
                self._write_status(core, pod, started, 1, f"CreateContainerConfigError: {exc}")
                return
            except StoppedError:
                return
            env[TERMINATION_ENV] = str(term_file)
            self._started.add(pod.metadata.uid)
            proc = subprocess.run(
                # Tied to this process: a SIGKILLed kubelet stand-in (or pytest) leaves no worker running.
                lifeline.command(resolve_argv(container, self.bin_dir, env)),
                env=env,
                cwd=tmp,
                capture_output=True,
                text=True,
                check=False,
                timeout=pod.spec.active_deadline_seconds or 900,
            )
            output = proc.stdout + proc.stderr
            message = termination_message(
                term_file.read_text(errors="replace"),
                output,
                proc.returncode,
                container.termination_message_policy,
            )
        self._write_status(core, pod, started, proc.returncode, message)

    def _write_status(self, core: Any, pod: Any, started: str, exit_code: int, message: str) -> None:
        """Report the exit, retried until the API answers: a pod that finished during an outage is reported
        once the API is back (the finish time stays the process's own)."""
        finished = _now()
        try:
            retry(
                lambda: write_terminated(core, pod, started, exit_code, message, finished=finished),
                self.outage,
                self._stop,
            )
        except StoppedError:
            return
        except ApiException as exc:
            if exc.status != 404:  # the Job (and its pod) may have been superseded meanwhile
                raise


def terminated_status(
    container: Any, started: str, finished: str, exit_code: int, message: str
) -> dict[str, Any]:
    """The pod status a kubelet reports once the pod's one container has exited."""
    return {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished}
        ],
        "containerStatuses": [
            {
                "name": container.name,
                "image": container.image,
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": "Completed" if exit_code == 0 else "Error",
                        "message": message,
                        "startedAt": started,
                        "finishedAt": finished,
                    }
                },
            }
        ],
    }


def write_terminated(
    core: Any, pod: Any, started: str, exit_code: int, message: str, *, finished: str | None = None
) -> None:
    """Patch the pod's status subresource as the kubelet does when its container exits."""
    status = terminated_status(pod.spec.containers[0], started, finished or _now(), exit_code, message)
    core.patch_namespaced_pod_status(
        pod.metadata.name, pod.metadata.namespace, {"status": status}, _request_timeout=REQUEST_TIMEOUT
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", action="append", required=True, dest="namespaces")
    parser.add_argument("--log-dir", type=Path, help="serving pods' output, one file per pod")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    kubelet = FakeKubelet(
        api=config.new_client_from_config(config_file=args.kubeconfig), namespaces=args.namespaces
    )
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
        kubelet.log_dir = args.log_dir
    print(
        f"fakekubelet: running refit and serving pods in {', '.join(args.namespaces)}; "
        f"serving pods' output in {kubelet.log_dir}",
        file=sys.stderr,
    )
    signal.signal(signal.SIGTERM, _interrupt)  # `make demo-down` stops us with SIGTERM: stop the pods too
    try:
        kubelet.serve()
    except KeyboardInterrupt:
        pass
    finally:
        kubelet.stop()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())

"""Play the kubelet for refit pods on the kwok nodes: run the pod's real container command as a local process.

kwok simulates nodes but runs no containers. For the e2e suite and the demo this module does what a kubelet
would for each refit pod: it reads the pod spec from the API (command, args, env, envFrom), runs that command
on this machine (the CPU `exported` backend), and writes the pod's status back through the API: the
container's exit code, its termination message (the file at terminationMessagePath, or with
`FallbackToLogsOnError` the tail of its output when the file is empty and the container failed) and the
phase. Nothing is read from the operator's memory.

One deviation from a real kubelet, because there is no container filesystem to bind-mount into: the
termination-message file is a temp file whose path the process receives in the environment variable
TRTREFIT_TERMINATION_LOG (the worker writes there instead of /dev/termination-log), just as a kubelet
injects its own variables (KUBERNETES_SERVICE_HOST, ...).

    python hack/fakekubelet.py --kubeconfig K --namespace NS [--namespace NS2]   # runs until interrupted
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

TERMINATION_ENV = "TRTREFIT_TERMINATION_LOG"
MAX_MESSAGE_BYTES = 4096  # the kubelet's limit for one container's termination message
FALLBACK_LOG_BYTES = 2048  # and for the log tail used by FallbackToLogsOnError
WORKER_ENTRYPOINT = "trtrefit"  # the worker image's ENTRYPOINT, used when a container sets no command


def is_refit_pod(pod: Any) -> bool:
    """A pod to run: owned by a Job, scheduled, not finished, its container runs `trtrefit refit`."""
    owners = pod.metadata.owner_references or []
    if not any(o.kind == "Job" for o in owners) or not pod.spec.node_name:
        return False
    if pod.metadata.deletion_timestamp is not None or pod.status.phase in ("Succeeded", "Failed"):
        return False
    container = pod.spec.containers[0]
    argv = [*(container.command or [WORKER_ENTRYPOINT]), *(container.args or [])]
    return Path(argv[0]).name == WORKER_ENTRYPOINT and "refit" in argv[1:2]


def resolve_argv(container: Any, bin_dir: Path) -> list[str]:
    """The container's command line, with the worker entrypoint resolved to this machine's install."""
    argv = [*(container.command or [WORKER_ENTRYPOINT]), *(container.args or [])]
    if Path(argv[0]).name == WORKER_ENTRYPOINT:
        local = bin_dir / WORKER_ENTRYPOINT
        argv[0] = str(local) if local.exists() else (shutil.which(WORKER_ENTRYPOINT) or argv[0])
    return argv


def _decode(data: dict[str, str] | None, binary: bool) -> dict[str, str]:
    if not data:
        return {}
    return {k: base64.b64decode(v).decode() if binary else v for k, v in data.items()}


def resolve_env(core: Any, pod: Any, container: Any) -> dict[str, str]:
    """The environment a kubelet would give the container: envFrom first, then env (which wins)."""
    ns = pod.metadata.namespace
    env: dict[str, str] = {}
    for source in container.env_from or []:
        prefix = source.prefix or ""
        if source.secret_ref is not None:
            data = _decode(core.read_namespaced_secret(source.secret_ref.name, ns).data, binary=True)
        elif source.config_map_ref is not None:
            data = _decode(core.read_namespaced_config_map(source.config_map_ref.name, ns).data, binary=False)
        else:
            continue
        env.update({prefix + k: v for k, v in data.items()})
    field_values = {
        "metadata.name": pod.metadata.name,
        "metadata.namespace": ns,
        "metadata.uid": pod.metadata.uid,
        "spec.nodeName": pod.spec.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name or "default",
    }
    for var in container.env or []:
        if var.value_from is None:
            env[var.name] = var.value or ""
        elif var.value_from.secret_key_ref is not None:
            ref = var.value_from.secret_key_ref
            env[var.name] = _decode(core.read_namespaced_secret(ref.name, ns).data, binary=True)[ref.key]
        elif var.value_from.config_map_key_ref is not None:
            ref = var.value_from.config_map_key_ref
            env[var.name] = core.read_namespaced_config_map(ref.name, ns).data[ref.key]
        elif var.value_from.field_ref is not None:
            env[var.name] = field_values.get(var.value_from.field_ref.field_path, "")
    return env


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
    """Runs every refit pod in `namespaces` once, each in its own thread."""

    api: Any
    namespaces: Sequence[str]
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    base_env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    _seen: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def poll_once(self) -> None:
        core = client.CoreV1Api(self.api)
        for ns in self.namespaces:
            for pod in core.list_namespaced_pod(ns).items:
                if pod.metadata.uid in self._seen or not is_refit_pod(pod):
                    continue
                self._seen.add(pod.metadata.uid)
                thread = threading.Thread(target=self.run_pod, args=(pod,), daemon=True)
                thread.start()
                self._threads.append(thread)

    def serve(self, interval: float = 0.3) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except ApiException as exc:  # a namespace being deleted, an API hiccup: try again
                if exc.status not in (403, 404, 409, 500, 503):
                    raise
            self._stop.wait(interval)

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)

    def run_pod(self, pod: Any) -> None:
        core = client.CoreV1Api(self.api)
        container = pod.spec.containers[0]
        started = _now()
        with tempfile.TemporaryDirectory(prefix="fakekubelet-") as tmp:
            term_file = Path(tmp) / "termination-log"
            term_file.touch()
            env = {**self.base_env, **resolve_env(core, pod, container), TERMINATION_ENV: str(term_file)}
            proc = subprocess.run(
                resolve_argv(container, self.bin_dir),
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
        try:
            write_terminated(core, pod, started, exit_code, message)
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


def write_terminated(core: Any, pod: Any, started: str, exit_code: int, message: str) -> None:
    """Patch the pod's status subresource as the kubelet does when its container exits."""
    status = terminated_status(pod.spec.containers[0], started, _now(), exit_code, message)
    core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", action="append", required=True, dest="namespaces")
    args = parser.parse_args(argv)
    kubelet = FakeKubelet(
        api=config.new_client_from_config(config_file=args.kubeconfig), namespaces=args.namespaces
    )
    print(f"fakekubelet: running refit pods in {', '.join(args.namespaces)}", file=sys.stderr)
    try:
        kubelet.serve()
    except KeyboardInterrupt:
        kubelet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

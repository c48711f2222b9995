"""InPlace rollouts, seen from outside: the serving Deployment, its pods' own reports and answers, a client
load. Shared by the demo, the e2e suite and the InPlace benchmark, so all three look at the same things.

- `serving_deployment`: pods that run `trtrefit serve`, reading the desired refit and the refit token
  through their environment (the ConfigMap and the Secret the operator keeps), S3 credentials from a Secret;
- `pod_states`: each live pod's ServingState, asked over HTTP at its pod IP and validated;
- `ask`: one inference through Triton's HTTP client (the Open Inference Protocol v2);
- `eager`: what PyTorch computes for a checkpoint (the model, `load_state_dict`, the same inputs);
- `Load`: a client sending requests the whole time to every ready pod, as a Service would spread them,
  counting failures and naming the checkpoint each answer came from.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from trtrefit.api.serving import (
    DEFAULT_PORT,
    DESIRED_ENV,
    DESIRED_KEY,
    STATE_PATH,
    TOKEN_ENV,
    TOKEN_KEY,
    ServingState,
)

SERVER_IMAGE = "ghcr.io/trtrefit/trt-refit-worker:0.1.0"  # the worker image has `trtrefit serve`
Outputs = dict[str, np.ndarray]


def serving_deployment(
    name: str, model: str, replicas: int = 3, credentials: str = "s3-credentials", port: int = DEFAULT_PORT
) -> dict[str, Any]:
    """A Deployment of `trtrefit serve` for the TRTModel `model`; its template never changes on a bump."""
    labels = {"app": name}
    desired = {"configMapKeyRef": {"name": f"{model}-trtrefit", "key": DESIRED_KEY}}
    token = {"secretKeyRef": {"name": f"{model}-trtrefit-token", "key": TOKEN_KEY}}
    env = [{"name": DESIRED_ENV, "valueFrom": desired}, {"name": TOKEN_ENV, "valueFrom": token}]
    container = {
        "name": "server",
        "image": SERVER_IMAGE,
        "command": ["trtrefit", "serve"],
        "args": ["--model-name", model, "--port", str(port)],
        "ports": [{"name": "http", "containerPort": port}],
        "env": env,
        "envFrom": [{"secretRef": {"name": credentials}}],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 2,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


# ------------------------------------------------------------------------------------------ the pods


def live_pods(api: client.ApiClient, namespace: str, app: str) -> list[client.V1Pod]:
    """The Deployment's pods that are not being deleted, by name."""
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return sorted((p for p in pods if p.metadata.deletion_timestamp is None), key=lambda p: p.metadata.name)


def is_ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return bool(pod.status.pod_ip) and any(c.type == "Ready" and c.status == "True" for c in conditions)


def restarts(pod: client.V1Pod) -> int:
    return sum(s.restart_count for s in pod.status.container_statuses or [])


def serving_state(ip: str, model: str, port: int = DEFAULT_PORT, timeout: float = 2.0) -> ServingState:
    """What the process at `ip` says it serves (GET /v2/models/{model}/trtrefit), validated."""
    url = f"http://{ip}:{port}{STATE_PATH.format(model=model)}"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return ServingState.model_validate_json(resp.read())


def pod_states(
    api: client.ApiClient, namespace: str, app: str, model: str, port: int = DEFAULT_PORT
) -> dict[str, ServingState | None]:
    """Every live pod's ServingState by pod name; None for a pod without an IP or not answering."""
    states: dict[str, ServingState | None] = {}
    for pod in live_pods(api, namespace, app):
        try:
            states[pod.metadata.name] = (
                serving_state(pod.status.pod_ip, model, port) if pod.status.pod_ip else None
            )
        except (urllib.error.URLError, OSError, ValueError):
            states[pod.metadata.name] = None
    return states


def all_serve(states: Mapping[str, ServingState | None], uri: str, count: int) -> bool:
    """`count` pods, each ready and serving the checkpoint `uri`, verified."""
    served = [s for s in states.values() if s is not None and s.ready and s.checkpoint is not None]
    return len(states) == count and len(served) == count and all(s.checkpoint.uri == uri for s in served)  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ answers


def load_inputs(path: Path) -> Outputs:
    """A bundle's inputs.safetensors as numpy arrays, by input name."""
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))


def ask(triton: Any, model: str, inputs: Outputs) -> Outputs:
    """One inference through tritonclient.http; every output of the model's metadata, as numpy."""
    import tritonclient.http as httpclient

    request = []
    for name, value in inputs.items():
        tensor = httpclient.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value.astype(np.float32), binary_data=True)
        request.append(tensor)
    result = triton.infer(model, request)
    outputs: list[dict[str, Any]] = result.get_response()["outputs"]
    return {o["name"]: result.as_numpy(o["name"]) for o in outputs}


def ask_pod(ip: str, model: str, inputs: Outputs, port: int = DEFAULT_PORT) -> Outputs:
    import tritonclient.http as httpclient

    triton = httpclient.InferenceServerClient(url=f"{ip}:{port}", network_timeout=10.0)
    try:
        return ask(triton, model, inputs)
    finally:
        triton.close()


def eager(factory: str, checkpoint: Path, inputs: Outputs) -> Outputs:
    """What eager PyTorch computes with the checkpoint's weights: the model from its factory, then
    `load_state_dict` of the checkpoint (strict), in IEEE fp32, on the same inputs."""
    import torch
    from safetensors.torch import load_file

    from trtrefit.worker.samples import build

    model = build(factory, seed=0)
    model.load_state_dict(load_file(str(checkpoint)))
    with torch.no_grad():
        out = model(*(torch.from_numpy(v) for v in inputs.values()))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return {f"output_{i}": o.numpy() for i, o in enumerate(outs)}


def same(a: Outputs, b: Outputs, atol: float = 1e-4) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[k], b[k], rtol=1e-4, atol=atol) for k in a)


def which(answer: Outputs, references: Mapping[str, Outputs]) -> str | None:
    """The name of the checkpoint whose eager outputs `answer` equals; None when none (a wrong answer)."""
    return next((name for name, ref in references.items() if same(answer, ref)), None)


# ------------------------------------------------------------------------------------------ load


@dataclass
class Load:
    """Requests the whole time, round-robin over the ready pods (re-read from the API every half second, as
    a Service's endpoints follow readiness), through tritonclient.http. A request that raises, or whose
    answer matches no known checkpoint, is a failure."""

    api: client.ApiClient
    namespace: str
    app: str
    model: str
    inputs: Outputs
    references: dict[str, Outputs]
    port: int = DEFAULT_PORT
    interval_s: float = 0.02
    answers: Counter[str] = field(default_factory=Counter)  # checkpoint name -> answers
    failures: list[str] = field(default_factory=list)
    by_pod: dict[str, Counter[str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def sent(self) -> int:
        return sum(self.answers.values()) + len(self.failures)

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True, name="load")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def since(self, mark: Counter[str]) -> Counter[str]:
        """Answers per checkpoint after `mark` (a copy of `answers` taken earlier)."""
        return self.answers - mark

    def wait_answers(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        start = self.sent
        while self.sent < start + count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the load got {self.sent - start} of {count} answers in {timeout:.0f} s"
                )
            time.sleep(0.05)

    def _run(self) -> None:
        import tritonclient.http as httpclient

        clients: dict[str, Any] = {}  # made in this thread: the client's connection pool is per thread
        targets: list[tuple[str, str]] = []
        refreshed, turn = 0.0, 0
        while not self._stop.is_set():
            if time.monotonic() - refreshed > 0.5:
                with contextlib.suppress(ApiException, urllib3.exceptions.HTTPError):  # keep the last list
                    pods = live_pods(self.api, self.namespace, self.app)
                    targets = [(p.metadata.name, p.status.pod_ip) for p in pods if is_ready(p)]
                refreshed = time.monotonic()
            if targets:
                name, ip = targets[turn % len(targets)]
                turn += 1
                triton = clients.get(ip)
                if triton is None:
                    triton = clients[ip] = httpclient.InferenceServerClient(url=f"{ip}:{self.port}")
                self._one(name, triton)
            self._stop.wait(self.interval_s)
        for triton in clients.values():
            triton.close()

    def _one(self, pod: str, triton: Any) -> None:
        try:
            answer = ask(triton, self.model, self.inputs)
        except Exception as exc:  # any failure of the request is what we count
            self.failures.append(f"{pod}: {type(exc).__name__}: {exc}")
            return
        label = which(answer, self.references)
        if label is None:
            self.failures.append(f"{pod}: an answer that matches no checkpoint")
            return
        self.answers[label] += 1
        self.by_pod.setdefault(pod, Counter())[label] += 1


def describe(states: Mapping[str, ServingState | None]) -> str:
    """One line per pod: what it serves, for logs and assertion messages."""
    lines = []
    for name, state in states.items():
        if state is None:
            lines.append(f"{name}: no answer")
        else:
            served = state.checkpoint.uri if state.checkpoint else "-"
            last = state.last_refit.outcome if state.last_refit else "-"
            lines.append(f"{name}: ready={state.ready} serves {served} (last refit {last})")
    return "\n".join(lines) or "(no pods)"


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)

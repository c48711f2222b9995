"""Platform faults injected while a TRTModel is mid-flight on the local control plane, and the recovery timed.

Shared by tests/e2e/test_platform_faults.py (which asserts what the model ends on) and
bench/platform_faults.py (which times each fault n times), so both inject the same faults at the same moments:

- `refit_running`: the refit Job's pod is running its real `trtrefit refit` process (the fake kubelet has
  started it) and the RefitStarted Event is written: a fault now hits the refit in flight;
- `rollout_started`: the operator has patched the serving Deployment (RolloutStarted) and the model is not
  Ready yet;
- `canary_refitting`: InPlace, a serving pod is refitting to the new checkpoint or already serves it while
  the rollout is not done;
- `outage`: stop one control-plane component (kube-apiserver or etcd, data kept), wait, start it again;
- `settled`: poll until the TRTModel is Ready on a checkpoint, riding out the API's own recovery.

Every reading comes from the API or from the pods themselves, never from the operator's memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from apiretry import REQUEST_TIMEOUT, transient
from demo import settled_on
from fakekubelet import FakeKubelet
from inplace import live_pods, pod_states
from localcluster import LocalCluster
from trtrefit.api.trtmodel import GROUP, PLURAL, VERSION

T = TypeVar("T")
NAME, INPLACE_APP = "demo", "demo-server"  # the demo's TRTModel and its InPlace serving Deployment
DOWN_S = 4.0  # a short outage: the CI budget, and long enough for every client to notice
JOB_LABEL = "app.kubernetes.io/managed-by=trtrefit-operator"


@dataclass(frozen=True)
class Recovery:
    """One fault and how the model came back from it."""

    fault: str
    caught: str  # what was in flight when the fault hit, as read just before it
    down_s: float  # from the stop until the component served again (0 for a killed pod)
    back_to_ready_s: float  # from the component serving again (the kill) to the TRTModel Ready
    status: dict[str, Any]


def until(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; an API failure that may pass (a lost connection,
    5xx) counts as not yet, any other error is raised."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = value
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            if not transient(exc):
                raise
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def model(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
    )
    return found


def event_reasons(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    """The reasons of the TRTModel's Events, oldest first, one per Event (counted, not deduplicated)."""
    events = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}", _request_timeout=REQUEST_TIMEOUT
    )
    ordered = sorted(events.items, key=lambda e: e.metadata.creation_timestamp)
    return [e.reason for e in ordered for _ in range(max(1, e.count or 1))]


def jobs(api: client.ApiClient, namespace: str) -> list[client.V1Job]:
    found = client.BatchV1Api(api).list_namespaced_job(namespace, label_selector=JOB_LABEL).items
    return [j for j in found if j.metadata.deletion_timestamp is None]


# ------------------------------------------------------------------------------------------ moments


def refit_running(
    api: client.ApiClient, namespace: str, name: str, kubelet: FakeKubelet, started_before: int
) -> str | None:
    """A refit in flight: the Job's pod runs its process and a RefitStarted Event beyond `started_before`
    is written; the model Refitting."""
    phase = (model(api, namespace, name).get("status") or {}).get("phase")
    if phase != "Refitting" or event_reasons(api, namespace, name).count("RefitStarted") <= started_before:
        return None
    for job in jobs(api, namespace):
        if job.status.succeeded or job.status.failed:
            continue
        pods = client.CoreV1Api(api).list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/job-name={job.metadata.name}"
        )
        for pod in pods.items:
            if kubelet.runs(pod.metadata.uid) and pod.status.phase == "Running":
                return f"refit pod {pod.metadata.name} running its process, TRTModel Refitting"
    return None


def rollout_started(api: client.ApiClient, namespace: str, name: str, engine_before: str) -> str | None:
    """The operator patched the Deployment off `engine_before`; the model is not Ready on it yet."""
    status = model(api, namespace, name).get("status") or {}
    spec = model(api, namespace, name)["spec"]["serving"]
    deployment = client.AppsV1Api(api).read_namespaced_deployment(spec["deploymentName"], namespace)
    container = next(c for c in deployment.spec.template.spec.containers if c.name == spec["containerName"])
    var = spec.get("engineEnvVar", "TRT_ENGINE_URI")
    engine = next((e.value for e in container.env or [] if e.name == var), None)
    if engine in (None, engine_before) or status.get("phase") == "Ready":
        return None
    updated = deployment.status.updated_replicas or 0
    return (
        f"Deployment patched, {updated}/{deployment.spec.replicas} pods updated, TRTModel {status['phase']}"
    )


def canary_refitting(
    api: client.ApiClient, namespace: str, target: str, replicas: int
) -> tuple[str, str] | None:
    """InPlace mid-rollout of the model NAME: (a pod refitting, else the first one serving `target`; what
    was caught) while fewer than `replicas` pods serve `target`."""
    states = pod_states(api, namespace, INPLACE_APP, NAME)
    on_target = [n for n, s in states.items() if s and s.checkpoint and s.checkpoint.uri == target]
    refitting = [n for n, s in states.items() if s and s.refitting]
    if len(on_target) >= replicas or not (refitting or on_target):
        return None
    pod = (refitting or on_target)[0]
    doing = "refitting" if refitting else "serving the new checkpoint"
    return pod, f"pod {pod} {doing}, {len(on_target)} of {replicas} pods on the new checkpoint"


# ------------------------------------------------------------------------------------------ faults


def outage(cluster: LocalCluster, component: str, down_s: float = DOWN_S) -> tuple[float, float]:
    """Stop `component` (its data kept), `down_s` seconds, start it; (seconds down, monotonic time back)."""
    stopped = time.monotonic()
    cluster.stop_component(component)
    time.sleep(down_s)
    cluster.start_component(component)
    back = time.monotonic()
    return back - stopped, back


def settled(
    api: client.ApiClient, namespace: str, name: str, checkpoint: str, replicas: int | None = None
) -> dict[str, Any]:
    """The status once the model is Ready on `checkpoint` for its generation (InPlace: with `replicas` ready
    pods reporting it)."""

    def check() -> dict[str, Any] | None:
        found = model(api, namespace, name)
        if not settled_on(checkpoint)(found):
            return None
        pods = found["status"].get("pods") or {}
        if replicas is not None and (pods.get("ready"), pods.get("current")) != (replicas, replicas):
            return None
        return dict(found["status"])

    return until(check, timeout=180, what=f"{name} Ready on {checkpoint}", interval=0.1)


def recover(
    fault: str,
    cluster: LocalCluster,
    component: str,
    caught: str,
    ready: Callable[[], dict[str, Any]],
    *,
    down_s: float = DOWN_S,
) -> Recovery:
    """Run the outage now and time the way back to `ready()`."""
    down, back = outage(cluster, component, down_s)
    status = ready()
    return Recovery(fault, caught, round(down, 2), round(time.monotonic() - back, 2), status)


def kill_serving_process(kubelet: FakeKubelet, api: client.ApiClient, namespace: str, pod_name: str) -> int:
    """SIGKILL the container process of a serving pod (a crash, not a deletion); its pid."""
    pod = client.CoreV1Api(api).read_namespaced_pod(pod_name, namespace)
    serving = kubelet.serving_pod(pod.metadata.uid)
    if serving is None or serving.process is None:
        raise AssertionError(f"no process runs pod {pod_name}")
    serving.process.kill()
    return int(serving.process.pid)


def restarts_of(api: client.ApiClient, namespace: str, app: str) -> dict[str, int]:
    return {
        p.metadata.name: sum(s.restart_count for s in p.status.container_statuses or [])
        for p in live_pods(api, namespace, app)
    }


# ------------------------------------------------------------------------------------------ scenarios


@dataclass(frozen=True)
class Stage:
    """Where a scenario is: the fault just recovered from and the checkpoint the model is Ready on."""

    recovery: Recovery
    checkpoint: str
    refits: int  # refits the model has done so far in this scenario


@dataclass(frozen=True)
class Scene:
    """Where a scenario runs: the control plane, an admin client, a namespace with the S3 credentials
    Secret (s3-credentials), the fake kubelet serving that namespace, and the operator watching it."""

    cluster: LocalCluster
    api: client.ApiClient
    namespace: str
    kubelet: FakeKubelet
    down_s: float = DOWN_S


def restart_scenario(
    scene: Scene, first_sha256: str, after: Callable[[Stage], None] = lambda stage: None
) -> list[Recovery]:
    """Restart strategy, one TRTModel through three faults: kube-apiserver restarted while the first refit
    runs, etcd restarted while the second runs, kube-apiserver restarted while the third rolls out. The
    third checkpoint is the first one pinned by digest: a new refit of known bytes. `after` sees each
    stage."""
    cluster, api, namespace, kubelet, down_s = (
        scene.cluster, scene.api, scene.namespace, scene.kubelet, scene.down_s
    )  # fmt: skip
    from demo import FIRST, SECOND, serving_deployment, trtmodel

    body = trtmodel(FIRST, "default")
    body["spec"]["publish"]["uri"] = f"s3://models/demo/refits-{namespace}/"
    client.AppsV1Api(api).create_namespaced_deployment(namespace, serving_deployment())
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    out: list[Recovery] = []

    def mid_refit(fault: str, component: str, checkpoint: str, refits: int) -> None:
        caught = until(
            lambda: refit_running(api, namespace, NAME, kubelet, started_before=refits - 1),
            timeout=120,
            what=f"refit {refits} running",
        )
        ready = lambda: settled(api, namespace, NAME, checkpoint)  # noqa: E731
        out.append(recover(fault, cluster, component, caught, ready, down_s=down_s))
        after(Stage(out[-1], checkpoint, refits))

    mid_refit("kube-apiserver restart mid-refit", "kube-apiserver", FIRST, 1)
    _patch(api, namespace, {"checkpoint": {"uri": SECOND}})
    mid_refit("etcd restart mid-refit", "etcd", SECOND, 2)

    engine_before = out[-1].status["serving"]["engine"]["uri"]
    _patch(api, namespace, {"checkpoint": {"uri": FIRST, "sha256": first_sha256}})
    caught = until(
        lambda: rollout_started(api, namespace, NAME, engine_before), timeout=120, what="the third rollout"
    )
    ready = lambda: settled(api, namespace, NAME, FIRST)  # noqa: E731
    out.append(
        recover("kube-apiserver restart mid-rollout", cluster, "kube-apiserver", caught, ready, down_s=down_s)
    )
    after(Stage(out[-1], FIRST, 3))
    return out


def inplace_scenario(
    scene: Scene, after: Callable[[Stage], None] = lambda stage: None, replicas: int = 2
) -> list[Recovery]:
    """InPlace, one TRTModel through two faults: kube-apiserver restarted while the canary refits (or has
    just refitted) to the second checkpoint, then, bumping back, the process of the pod refitting killed
    (SIGKILL: the container crashes and restarts in its pod). `after` sees each stage."""
    from demo import FIRST, SECOND, trtmodel
    from inplace import serving_deployment

    cluster, api, namespace, kubelet, down_s = (
        scene.cluster, scene.api, scene.namespace, scene.kubelet, scene.down_s
    )  # fmt: skip
    client.AppsV1Api(api).create_namespaced_deployment(
        namespace, serving_deployment(INPLACE_APP, NAME, replicas)
    )
    body = trtmodel(FIRST, "default", "InPlace")
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    settled(api, namespace, NAME, FIRST, replicas)
    out: list[Recovery] = []

    _patch(api, namespace, {"checkpoint": {"uri": SECOND}})
    _, caught = until(
        lambda: canary_refitting(api, namespace, SECOND, replicas),
        timeout=120,
        what="the canary on the second checkpoint",
        interval=0.01,
    )
    ready = lambda: settled(api, namespace, NAME, SECOND, replicas)  # noqa: E731
    out.append(
        recover("kube-apiserver restart mid-canary", cluster, "kube-apiserver", caught, ready, down_s=down_s)
    )
    after(Stage(out[-1], SECOND, 2))

    _patch(api, namespace, {"checkpoint": {"uri": FIRST}})
    victim, caught = until(
        lambda: canary_refitting(api, namespace, FIRST, replicas),
        timeout=120,
        what="a pod refitting to the first checkpoint",
        interval=0.01,
    )
    kill_serving_process(kubelet, api, namespace, victim)
    killed = time.monotonic()
    status = settled(api, namespace, NAME, FIRST, replicas)
    seconds = round(time.monotonic() - killed, 2)
    out.append(Recovery("serving pod killed mid-refit", f"{caught}; killed {victim}", 0.0, seconds, status))
    after(Stage(out[-1], FIRST, 3))
    return out


def _patch(api: client.ApiClient, namespace: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": spec}
    )

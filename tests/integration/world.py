"""The objects around a TRTModel on the real control plane, and playing the kubelet for the refit pod."""

from __future__ import annotations

from collections import Counter
from typing import Any

from kubernetes import client

from fakekubelet import write_terminated
from tests.kubehelpers import wait_for
from trtrefit.api.request import RefitRequest
from trtrefit.api.result import Outcome, PublishedEngine, RefitResult, Verification, exit_code
from trtrefit.api.trtmodel import API_VERSION, GROUP, KIND, PLURAL, VERSION

OLD_ENGINE = "s3://models/tiny/engine.ep"
ENGINE_ENV = "TRT_ENGINE_URI"
SERVER = "tiny-server"


def apis(
    api: client.ApiClient,
) -> tuple[client.CustomObjectsApi, client.BatchV1Api, client.CoreV1Api, client.AppsV1Api]:
    return client.CustomObjectsApi(api), client.BatchV1Api(api), client.CoreV1Api(api), client.AppsV1Api(api)


def serving_deployment(
    name: str = SERVER, replicas: int = 2, progress_deadline: int | None = None
) -> dict[str, Any]:
    """A server Deployment that loads its engine from TRT_ENGINE_URI; kwok makes its pods Ready."""
    labels = {"app": name}
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": labels},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "containers": [
                    {
                        "name": "server",
                        "image": "example/trt-server:1",
                        "env": [{"name": ENGINE_ENV, "value": OLD_ENGINE}],
                    }
                ]
            },
        },
    }
    if progress_deadline is not None:
        spec["progressDeadlineSeconds"] = progress_deadline
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}


def create_serving(api: client.ApiClient, namespace: str, progress_deadline: int | None = None) -> None:
    """The server Deployment, created and waited for until it is rolled out."""
    deployment = serving_deployment(progress_deadline=progress_deadline)
    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment)
    wait_for(lambda: rolled_out(api, namespace), timeout=60, what="the server Deployment available")


def trtmodel(
    name: str = "tiny", checkpoint: str = "s3://ckpt/tiny/step-1.safetensors", **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {
            "engine": {"uri": OLD_ENGINE},
            "source": {"uri": "s3://models/tiny/source.pt2"},
            "checkpoint": {"uri": checkpoint},
            "verify": {"generate": [{"shape": [2, 8], "dtype": "float32"}], "seed": 0},
            "publish": {"uri": "s3://models/tiny/refits/"},
            "serving": {"deploymentName": SERVER, "containerName": "server"},
            "refitJob": {"backoffLimit": 0},
        },
    }
    body["spec"].update(spec)
    return body


def create_model(api: client.ApiClient, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )
    return created


def get_model(api: client.ApiClient, namespace: str, name: str = "tiny") -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return found


def patch_spec(api: client.ApiClient, namespace: str, spec: dict[str, Any], name: str = "tiny") -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": spec}, _content_type="application/merge-patch+json"
    )


def condition(model: dict[str, Any], kind: str) -> dict[str, Any]:
    for item in model.get("status", {}).get("conditions", []):
        if item["type"] == kind:
            return dict(item)
    return {}


def status_of(api: client.ApiClient, namespace: str, name: str = "tiny") -> dict[str, Any]:
    return dict(get_model(api, namespace, name).get("status", {}))


def wait_phase(
    api: client.ApiClient, namespace: str, phase: str, timeout: float = 60, name: str = "tiny"
) -> dict[str, Any]:
    """The model's status once its phase is `phase` for its current generation."""

    def reached() -> dict[str, Any] | None:
        model = get_model(api, namespace, name)
        status = model.get("status", {})
        current = status.get("observedGeneration") == model["metadata"]["generation"]
        return status if current and status.get("phase") == phase else None

    found = wait_for(reached, timeout=timeout, what=f"TRTModel {namespace}/{name} phase {phase}")
    assert found is not None
    return found


def refit_jobs(api: client.ApiClient, namespace: str) -> list[client.V1Job]:
    jobs: list[client.V1Job] = (
        client.BatchV1Api(api)
        .list_namespaced_job(namespace, label_selector="app.kubernetes.io/managed-by=trtrefit-operator")
        .items
    )
    return [job for job in jobs if job.metadata.deletion_timestamp is None]


def wait_job(
    api: client.ApiClient, namespace: str, checkpoint: str | None = None, timeout: float = 60
) -> client.V1Job:
    """The one live refit Job (of `checkpoint`, when given)."""

    def found() -> client.V1Job | None:
        jobs = refit_jobs(api, namespace)
        if checkpoint is not None:
            jobs = [j for j in jobs if job_request(j.spec.template.spec).checkpoint.uri == checkpoint]
        return jobs[0] if len(jobs) == 1 else None

    job: client.V1Job = wait_for(found, timeout=timeout, what=f"one refit Job in {namespace} ({checkpoint})")
    return job


def running_pod(api: client.ApiClient, job: client.V1Job, timeout: float = 60) -> client.V1Pod:
    """The Job's pod once kwok has made it Running (so kwok will not overwrite what we write next)."""
    core = client.CoreV1Api(api)

    def running() -> client.V1Pod | None:
        pods = core.list_namespaced_pod(
            job.metadata.namespace, label_selector=f"batch.kubernetes.io/job-name={job.metadata.name}"
        ).items
        # By owner uid: a Job deleted and recreated under the same name can leave its old pod behind.
        live = [
            p
            for p in pods
            if p.status.phase == "Running"
            and p.status.pod_ip
            and any(ref.uid == job.metadata.uid for ref in p.metadata.owner_references or [])
        ]
        return live[0] if live else None

    pod: client.V1Pod = wait_for(running, timeout=timeout, what=f"a Running pod of Job {job.metadata.name}")
    return pod


def finish_pod(api: client.ApiClient, pod: client.V1Pod, message: str, code: int) -> None:
    """Write what a kubelet would when the refit container exits: exit code, termination message, phase."""
    started = pod.status.start_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    write_terminated(client.CoreV1Api(api), pod, started, code, message)


def job_request(pod_spec: client.V1PodSpec) -> RefitRequest:
    """The RefitRequest of a refit pod's `refit --request JSON` arguments."""
    args: list[str] = pod_spec.containers[0].args
    return RefitRequest.model_validate_json(args[args.index("--request") + 1])


def publish_arg(pod: client.V1Pod) -> str:
    """The publish prefix of the refit pod's request."""
    publish = job_request(pod.spec).publish
    assert publish is not None
    return publish.uri


def passed(pod: client.V1Pod, digest: str = "a" * 64) -> RefitResult:
    """The result the worker would write for this pod's arguments, read from the pod spec."""
    return RefitResult(
        outcome=Outcome.PASSED,
        message="refitted 12 weights",
        backend="exported",
        engine=PublishedEngine(uri=f"{publish_arg(pod)}{digest}.ep", sha256=digest),
        verification=Verification(
            passed=True, max_abs_error=1e-6, max_rel_error=2e-6, min_cosine_similarity=1.0
        ),
    )


def verification_failed() -> RefitResult:
    return RefitResult(
        outcome=Outcome.VERIFICATION_FAILED,
        message="output 0: max abs error 0.42 > atol 0.01",
        backend="exported",
        verification=Verification(
            passed=False, max_abs_error=0.42, max_rel_error=0.8, min_cosine_similarity=0.91
        ),
    )


def worker_error(message: str) -> RefitResult:
    return RefitResult(outcome=Outcome.ERROR, message=message)


def complete(
    api: client.ApiClient, job: client.V1Job, result: RefitResult | None = None, digest: str = "a" * 64
) -> client.V1Pod:
    """Play the kubelet for the Job's pod: it exits with the result's exit code and message (by default a
    passed refit published as <publish.uri><digest>.ep)."""
    pod = running_pod(api, job)
    outcome = result if result is not None else passed(pod, digest)
    finish_pod(api, pod, outcome.to_json(), exit_code(outcome.outcome))
    return pod


def events_of(api: client.ApiClient, namespace: str, name: str = "tiny") -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events on the TRTModel, oldest first."""
    items = (
        client.CoreV1Api(api)
        .list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=TRTModel"
        )
        .items
    )
    items.sort(key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
    return [(e.type, e.reason, e.message) for e in items]


def wait_events(
    api: client.ApiClient, namespace: str, *reasons: str, name: str = "tiny", timeout: float = 30.0
) -> list[tuple[str, str, str]]:
    """events_of once every reason is among them, as often as it is given.

    kopf posts Events from a queue, so one can land after the status change a test has waited for.
    """
    wanted = Counter(reasons)

    def arrived() -> list[tuple[str, str, str]] | None:
        events = events_of(api, namespace, name)
        have = Counter(reason for _, reason, _ in events)
        return events if all(have[reason] >= n for reason, n in wanted.items()) else None

    found = wait_for(arrived, timeout=timeout, what=f"the events {sorted(wanted.elements())} on {name}")
    assert found is not None
    return found


def engine_in_template(api: client.ApiClient, namespace: str, name: str = SERVER) -> str | None:
    deployment = client.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    (container,) = [c for c in deployment.spec.template.spec.containers if c.name == "server"]
    values = [e.value for e in container.env or [] if e.name == ENGINE_ENV]
    return values[0] if values else None


def rolled_out(api: client.ApiClient, namespace: str, name: str = SERVER) -> bool:
    d = client.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    s = d.status
    return bool(
        s.observed_generation == d.metadata.generation
        and (s.updated_replicas or 0) == d.spec.replicas
        and (s.available_replicas or 0) == d.spec.replicas
        and (s.replicas or 0) == d.spec.replicas
    )

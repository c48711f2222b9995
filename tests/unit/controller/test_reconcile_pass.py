"""The pass end to end over an in-memory stand-in for the API (the integration tests use the real one):
one status write per pass and none when nothing changed, idempotent Job creation, conflicts retried."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.unit.api.samples import body
from tests.unit.controller.objects import PUBLISHED, apply_merge_patch, deployment, passed
from tests.unit.controller.scenarios import NOW
from trtrefit.controller.config import OperatorConfig
from trtrefit.controller.kube import ConflictError, Obj, merge_patch
from trtrefit.controller.reconcile import InvalidSpecError, reconcile

CONFIG = OperatorConfig(worker_image="w:1")


class MemoryCluster:
    """The Cluster interface over dicts; merge patches applied like the API server does."""

    def __init__(self, model: Obj, serving: Obj | None) -> None:
        self.model, self.serving = model, serving
        self.jobs: dict[str, Obj] = {}
        self.pods: list[Obj] = []
        self.status_writes: list[Obj] = []
        self.deployment_patches: list[Obj] = []
        self.conflicts = 0

    def get_model(self, namespace: str, name: str) -> Obj | None:
        return copy.deepcopy(self.model)

    def patch_model_status(self, namespace: str, name: str, patch: Obj) -> Obj:
        self.status_writes.append(patch)
        self.model["status"] = apply_merge_patch(self.model.get("status", {}), patch)
        return self.model

    def list_jobs(self, namespace: str, model_uid: str) -> list[Obj]:
        return copy.deepcopy(list(self.jobs.values()))

    def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        return copy.deepcopy(self.pods)

    def create_job(self, namespace: str, job: Obj) -> Obj:
        name = job["metadata"]["name"]
        if name in self.jobs:
            raise ConflictError(409, "AlreadyExists", f"jobs.batch {name!r} already exists")
        created = copy.deepcopy(job)
        created["metadata"] |= {"uid": f"uid-{len(self.jobs)}", "creationTimestamp": "2026-01-02T03:00:00Z"}
        self.jobs[name] = created
        return created

    def read_job(self, namespace: str, name: str) -> Obj | None:
        return self.jobs.get(name)

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        self.jobs.pop(name, None)

    def get_deployment(self, namespace: str, name: str) -> Obj | None:
        return copy.deepcopy(self.serving)

    def patch_deployment(self, namespace: str, name: str, patch: Obj) -> Obj:
        if self.conflicts:
            self.conflicts -= 1
            raise ConflictError(409, "Conflict", "the object has been modified")
        assert self.serving is not None
        annotations = patch["metadata"].get("annotations") or {}
        meta = self.serving["metadata"]
        meta["annotations"] = {
            k: v for k, v in {**(meta.get("annotations") or {}), **annotations}.items() if v is not None
        }
        if "spec" not in patch:  # the claim: metadata only, no rollout
            return copy.deepcopy(self.serving)
        self.deployment_patches.append(patch)
        template = self.serving["spec"]["template"]
        template["metadata"]["annotations"] |= {
            k: v for k, v in patch["spec"]["template"]["metadata"]["annotations"].items() if v
        }
        env = patch["spec"]["template"]["spec"]["containers"][0]["env"][0]
        template["spec"]["containers"][0]["env"] = [env]
        self.serving["metadata"]["generation"] += 1
        return copy.deepcopy(self.serving)


def run(cluster: MemoryCluster) -> Any:
    return reconcile(cluster, CONFIG, "vision", "resnet50", NOW)  # type: ignore[arg-type]


def finish_job(cluster: MemoryCluster, message: str, exit_code: int = 0) -> None:
    (job,) = cluster.jobs.values()
    job["status"] = {
        "startTime": "2026-01-02T03:00:00Z",
        "completionTime": "2026-01-02T03:00:42Z",
        "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-02T03:00:42Z"}],
    }
    cluster.pods = [
        {
            "metadata": {"name": "p", "ownerReferences": [{"uid": job["metadata"]["uid"]}]},
            "status": {
                "containerStatuses": [
                    {
                        "name": "refit",
                        "state": {
                            "terminated": {
                                "exitCode": exit_code,
                                "message": message,
                                "finishedAt": "2026-01-02T03:00:42Z",
                            }
                        },
                    }
                ]
            },
        }
    ]


def test_first_pass_creates_the_job_and_writes_status_once() -> None:
    cluster = MemoryCluster(body(), deployment())
    result = run(cluster)
    assert len(cluster.jobs) == 1 and len(cluster.status_writes) == 1
    assert [e.reason for e in result.events] == ["RefitStarted"]
    assert result.phase == "Refitting" and result.wrote_status and result.retry_after is None


def test_a_repeated_pass_changes_nothing_and_writes_nothing() -> None:
    cluster = MemoryCluster(body(), deployment())
    run(cluster)
    again = run(cluster)
    assert len(cluster.jobs) == 1 and len(cluster.status_writes) == 1
    assert again.events == [] and not again.wrote_status


def test_the_whole_flow_to_ready() -> None:
    cluster = MemoryCluster(body(), deployment())
    run(cluster)
    finish_job(cluster, passed().to_json())
    rolled = run(cluster)
    assert [e.reason for e in rolled.events] == ["RolloutStarted", "RefitPassed"]
    (patch,) = cluster.deployment_patches
    assert patch["metadata"]["resourceVersion"] == "77"
    assert run(cluster).phase == "RollingOut"  # the Deployment controller has not seen the new template
    assert cluster.serving is not None
    cluster.serving["status"]["observedGeneration"] = cluster.serving["metadata"]["generation"]
    ready = run(cluster)
    assert ready.phase == "Ready" and [e.reason for e in ready.events] == ["RolloutComplete"]
    assert cluster.model["status"]["serving"]["engine"]["uri"] == PUBLISHED


def test_a_conflicting_deployment_patch_is_retried_soon() -> None:
    cluster = MemoryCluster(body(), deployment())
    run(cluster)
    finish_job(cluster, passed().to_json())
    cluster.conflicts = 1
    first = run(cluster)
    assert first.retry_after == 1.0 and cluster.deployment_patches == []
    assert first.retry_reason == "the Deployment changed while RollOut ran"
    assert [e.reason for e in first.events] == ["RefitPassed"]
    second = run(cluster)
    assert second.retry_after is None and len(cluster.deployment_patches) == 1


def test_a_foreign_job_with_the_same_name_blocks_and_retries() -> None:
    cluster = MemoryCluster(body(), deployment())
    run(cluster)
    (name,) = cluster.jobs
    cluster.jobs[name]["metadata"]["labels"] = {}  # now it is someone else's
    cluster.jobs[name]["metadata"]["uid"] = "foreign"
    cluster.list_jobs = lambda namespace, model_uid: []  # type: ignore[method-assign]
    del cluster.model["status"]["lastRefit"]  # as if ours had never started
    result = run(cluster)
    assert result.retry_after == 10.0 and result.phase == "Pending"
    assert "belongs to another owner" in result.retry_reason
    reconciling = next(c for c in cluster.model["status"]["conditions"] if c["type"] == "Reconciling")
    assert "belongs to another owner" in reconciling["message"]


def test_an_object_that_does_not_parse_is_stalled_and_not_retried() -> None:
    broken = body()
    broken["spec"]["checkpoint"] = {"uri": "ftp://nope"}
    cluster = MemoryCluster(broken, deployment())
    with pytest.raises(InvalidSpecError):
        run(cluster)
    stalled = next(c for c in cluster.model["status"]["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "InvalidSpec"


def test_a_deleted_model_is_left_alone() -> None:
    gone = MemoryCluster(body(), deployment())
    gone.get_model = lambda namespace, name: None  # type: ignore[method-assign]
    assert run(gone).reference is None and gone.jobs == {}


def test_status_patch_is_minimal() -> None:
    cluster = MemoryCluster(body(), deployment())
    run(cluster)
    finish_job(cluster, passed().to_json())
    before = copy.deepcopy(cluster.model["status"])
    run(cluster)
    assert cluster.status_writes[-1] == merge_patch(before, cluster.model["status"])

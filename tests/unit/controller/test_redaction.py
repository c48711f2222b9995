"""A presigned checkpoint URI (credentials in its query string) reaches the refit Job, which needs it, and
nothing else the operator writes: not status, Events or annotations."""

from __future__ import annotations

import json

from tests.unit.api.samples import body
from tests.unit.controller.objects import PUBLISHED, deployment, passed
from tests.unit.controller.test_reconcile_pass import MemoryCluster, finish_job, run

SECRET = "X-Amz-Signature=0f9e8d7c6b5a"
PRESIGNED = f"https://ckpt.example/resnet50/step-7.pt2?X-Amz-Credential=AKIA&{SECRET}"


def test_a_presigned_checkpoint_is_shown_redacted_everywhere_but_the_job_args() -> None:
    cluster = MemoryCluster(body({"checkpoint": {"uri": PRESIGNED}}), deployment())
    started = run(cluster)
    (job,) = cluster.jobs.values()
    assert SECRET in json.dumps(job["spec"]["template"]["spec"]["containers"][0]["args"])
    finish_job(cluster, passed(PUBLISHED).to_json())
    rolled = run(cluster)
    written = json.dumps([cluster.status_writes, cluster.deployment_patches, job["metadata"]])
    messages = " ".join(e.message for e in started.events + rolled.events)
    assert SECRET not in written + messages
    assert "https://ckpt.example/resnet50/step-7.pt2?REDACTED" in json.dumps(cluster.model["status"])
    assert "step-7.pt2?REDACTED" in messages

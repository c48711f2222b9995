"""The desired refit: what a TRTModel's spec asks the worker to produce, and its stable key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from trtrefit.api.redact import redact_uri
from trtrefit.api.spec import TRTModelSpec
from trtrefit.api.status import Digest

KEY_LENGTH = 32  # hex digits: 128 bits, and short enough for a label value


@dataclass(frozen=True)
class DesiredRefit:
    """The inputs that determine a refit's output. Two specs with the same key need only one refit; the
    publish target and the Job's settings are not part of it (they do not change the refitted program)."""

    key: str
    checkpoint: Digest
    engine: Digest
    publish: str | None = None  # where a refit Job publishes; not part of the key


def desired_refit(spec: TRTModelSpec) -> DesiredRefit:
    """The desired refit of a spec; equal specs give equal keys, on every operator and after restarts."""
    identity = {
        "engine": spec.engine.wire(),
        "source": spec.source.wire() if spec.source else None,
        "checkpoint": spec.checkpoint.wire(),
        "verify": spec.verify.wire(),
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return DesiredRefit(
        key=hashlib.sha256(canonical.encode()).hexdigest()[:KEY_LENGTH],
        # Shown in status, Events and annotations: without a presigned query or userinfo.
        checkpoint=Digest(uri=redact_uri(spec.checkpoint.uri), sha256=spec.checkpoint.sha256),
        engine=Digest(uri=redact_uri(spec.engine.uri), sha256=spec.engine.sha256),
        publish=spec.publish.uri if spec.publish else None,
    )


def refit_job_digest(spec: TRTModelSpec, image: str | None) -> str:
    """What can fix a failure of the refit pod (image, resources, deadline, credentials), as one digest:
    kept beside a failed refit, so that changing it retries the refit and a successful one is left alone."""
    canonical = json.dumps({"refitJob": spec.refit_job.wire(), "image": image}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_LENGTH]


def artifact_uris(spec: TRTModelSpec) -> list[str]:
    """Every URI the spec reads, as written (they may carry a presigned query): what must never be shown."""
    artifacts = (spec.engine, spec.source, spec.checkpoint, spec.verify.inputs)
    return [artifact.uri for artifact in artifacts if artifact is not None]

"""Names, labels and annotations the operator puts on the objects it owns or patches."""

from __future__ import annotations

import hashlib

PREFIX = "trtrefit.dev"
FINALIZER = f"{PREFIX}/finalizer"
FIELD_MANAGER = "trtrefit-operator"
MANAGED_BY = "trtrefit-operator"

# Labels on refit Jobs and their pods.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MODEL_LABEL = f"{PREFIX}/model"
MODEL_UID_LABEL = f"{PREFIX}/model-uid"
REFIT_KEY_LABEL = f"{PREFIX}/refit-key"
REFIT_APP = "trtrefit-refit"

# Annotations on the serving pod template: what the pods load and which refit made it.
ENGINE_SHA256_ANNOTATION = f"{PREFIX}/engine-sha256"
REFIT_KEY_ANNOTATION = f"{PREFIX}/refit-key"
CHECKPOINT_ANNOTATION = f"{PREFIX}/checkpoint"
CHECKPOINT_SHA256_ANNOTATION = f"{PREFIX}/checkpoint-sha256"
# Annotations on the serving Deployment itself.
MODEL_ANNOTATION = f"{PREFIX}/model"
REVERTED_ANNOTATION = f"{PREFIX}/reverted-refit"  # the refit whose rollout failed and was reverted

# On the TRTModel: any new value retries a failed refit once more (`kubectl annotate trtm NAME ...=2`).
RETRY_ANNOTATION = f"{PREFIX}/retry"
# On refit Jobs: what the retry policy compares against the spec, kept with the Job so status can be rebuilt.
ATTEMPT_ANNOTATION = f"{PREFIX}/attempt"
REFIT_JOB_DIGEST_ANNOTATION = f"{PREFIX}/refit-job-digest"
RETRY_TOKEN_ANNOTATION = f"{PREFIX}/retry-token"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # Kueue admits a Job by lifting its spec.suspend

WORKER_CONTAINER = "refit"
MAX_NAME = 63


def job_name(model_name: str, key: str) -> str:
    """`<model>-refit-<key[:10]>`, at most 63 characters: deterministic, so a restarted operator finds it."""
    suffix = f"-refit-{key[:10]}"
    room = MAX_NAME - len(suffix)
    if len(model_name) > room:
        digest = hashlib.sha256(model_name.encode()).hexdigest()[:5]
        model_name = f"{model_name[: room - 6].rstrip('-')}-{digest}"
    return f"{model_name}{suffix}"


# InPlace: the objects every serving pod reads through its environment (api/serving.py names the keys).
def token_secret_name(model_name: str) -> str:
    """`<model>-trtrefit-token`: the Secret holding the bearer token of the pods' refit endpoint."""
    return f"{model_name}-trtrefit-token"


def desired_config_map_name(model_name: str) -> str:
    """`<model>-trtrefit`: the ConfigMap holding the refit request a starting pod performs before Ready."""
    return f"{model_name}-trtrefit"

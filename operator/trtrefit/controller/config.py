"""Operator-wide settings: defaults for the refit Job that a TRTModel may override."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from trtrefit.api.quantity import byte_size

WORKER_IMAGE_ENV = "TRTREFIT_WORKER_IMAGE"
WORKER_COMMAND_ENV = "TRTREFIT_WORKER_COMMAND"
GPU_RESOURCE_ENV = "TRTREFIT_GPU_RESOURCE"
MAX_ARTIFACT_SIZE_ENV = "TRTREFIT_MAX_ARTIFACT_SIZE"
ALLOWED_IMAGES_ENV = "TRTREFIT_ALLOWED_IMAGES"
ALLOWED_SERVICE_ACCOUNTS_ENV = "TRTREFIT_ALLOWED_SERVICE_ACCOUNTS"
ANY = "*"


@dataclass(frozen=True)
class OperatorConfig:
    """`worker_image` is the refit Job's image unless spec.refitJob.image is set; `worker_command` is the
    entrypoint before `refit <flags>`; `gpu_resource` is the extended resource a GPU is requested as.
    `allowed_images` (image prefixes) and `allowed_service_accounts` (names) bound what a TRTModel may ask
    its refit Job to run as; empty allows anything (the chart always sets both)."""

    worker_image: str | None = None
    worker_command: tuple[str, ...] = ("trtrefit",)
    gpu_resource: str = "nvidia.com/gpu"
    max_artifact_size: str = "8Gi"  # per artifact a refit downloads; spec.refitJob.maxArtifactSize overrides
    allowed_images: tuple[str, ...] = ()
    allowed_service_accounts: tuple[str, ...] = ()
    log_format: str = "text"  # the operator's own; refit Jobs log alike unless their env says otherwise

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OperatorConfig:
        """Read TRTREFIT_WORKER_IMAGE, TRTREFIT_WORKER_COMMAND (shell words), TRTREFIT_GPU_RESOURCE and the
        comma-separated TRTREFIT_ALLOWED_IMAGES / TRTREFIT_ALLOWED_SERVICE_ACCOUNTS."""
        default = cls()
        command = tuple(shlex.split(env.get(WORKER_COMMAND_ENV, ""))) or default.worker_command
        return cls(
            worker_image=env.get(WORKER_IMAGE_ENV) or None,
            worker_command=command,
            gpu_resource=env.get(GPU_RESOURCE_ENV) or default.gpu_resource,
            max_artifact_size=_size(env.get(MAX_ARTIFACT_SIZE_ENV) or default.max_artifact_size),
            allowed_images=_words(env.get(ALLOWED_IMAGES_ENV, "")),
            allowed_service_accounts=_words(env.get(ALLOWED_SERVICE_ACCOUNTS_ENV, "")),
        )


def _size(text: str) -> str:
    if byte_size(text) is None:
        raise ValueError(f"{MAX_ARTIFACT_SIZE_ENV}={text!r}: expected a byte quantity such as 8Gi")
    return text


def _words(text: str) -> tuple[str, ...]:
    return tuple(word for word in (part.strip() for part in text.split(",")) if word)

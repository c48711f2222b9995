"""What a TRTModel may ask its refit Job to run: creating a TRTModel amounts to creating pods with a chosen
image and ServiceAccount, so the operator enforces the cluster admin's allowlists (chart values
refit.allowedImages and refit.allowedServiceAccounts) before it creates anything."""

from __future__ import annotations

from trtrefit.api.trtmodel import TRTModel
from trtrefit.controller.config import ANY, OperatorConfig


def image_allowed(image: str, allowed: tuple[str, ...]) -> bool:
    """An entry allows an image repository (`ghcr.io/org/worker` allows its tags and digests) or, ending
    with `/`, every repository under a path (`ghcr.io/org/`)."""
    if not allowed or ANY in allowed:
        return True
    for entry in allowed:
        if entry.endswith("/") and image.startswith(entry):
            return True
        if image == entry or image.startswith((f"{entry}:", f"{entry}@")):
            return True
    return False


def refit_job_violation(model: TRTModel, image: str | None, config: OperatorConfig) -> str:
    """Why the refit Job this model asks for is not allowed, naming the field; "" when it is."""
    job = model.spec.refit_job
    if image is not None and not image_allowed(image, config.allowed_images):
        field = "spec.refitJob.image" if job.image else "the operator's worker image"
        return (
            f"{field} {image} is not allowed for refit Jobs (allowed: {', '.join(config.allowed_images)}); "
            "a cluster admin can add it to the chart's refit.allowedImages"
        )
    account = job.service_account_name
    allowed = config.allowed_service_accounts
    if account and allowed and ANY not in allowed and account not in allowed:
        return (
            f"spec.refitJob.serviceAccountName {account} is not allowed for refit Jobs (allowed: "
            f"{', '.join(allowed)}); a cluster admin can add it to the chart's refit.allowedServiceAccounts"
        )
    return ""

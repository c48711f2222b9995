"""Credentials never ride in a URI: user:password@ is refused by the model (and by the CRD's CEL rule, see
tests/integration/test_api_validation.py); a presigned query is allowed and shown redacted."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from trtrefit.api.redact import redact_text, redact_uri
from trtrefit.api.request import RefitRequest
from trtrefit.api.spec import PinnedArtifact


@pytest.mark.parametrize(
    "uri", ["https://user:pass@models.example/e.ep", "s3://AKIA:secret@bucket/e.ep", "gs://token@b/c"]
)
def test_userinfo_is_refused_naming_the_remedy(uri: str) -> None:
    with pytest.raises(ValidationError, match="no credentials in URIs"):
        PinnedArtifact(uri=uri)


def test_an_at_sign_in_the_path_is_not_userinfo() -> None:
    assert PinnedArtifact(uri="s3://bucket/team@2026/e.ep").uri == "s3://bucket/team@2026/e.ep"


def test_a_request_refuses_userinfo_in_any_role() -> None:
    body = {
        "engine": {"uri": "s3://b/e.ep"},
        "checkpoint": {"uri": "https://u:p@h/c.pt2"},
        "verify": {"generate": [{"shape": [1]}]},
    }
    with pytest.raises(ValidationError, match=r"checkpoint\.uri"):
        RefitRequest.model_validate(body)


def test_redaction_drops_userinfo_and_query() -> None:
    presigned = "https://h.example/c.safetensors?X-Amz-Signature=abc&X-Amz-Credential=AKIA"
    assert redact_uri(presigned) == "https://h.example/c.safetensors?REDACTED"
    assert redact_uri("https://u:p@h.example/x") == "https://h.example/x"
    assert redact_text(f"cannot read {presigned}: 403", [presigned]) == (
        "cannot read https://h.example/c.safetensors?REDACTED: 403"
    )

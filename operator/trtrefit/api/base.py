"""The base of every TRTModel API model: camelCase aliases (from kube-custom-resource), frozen instances,
and small helpers for Kubernetes schema markers that pydantic cannot express on its own."""

from __future__ import annotations

from typing import Any, NamedTuple

from kube_custom_resource import schema
from pydantic import BaseModel as PydanticModel
from pydantic import ConfigDict

# Artifacts are read through fsspec. The schemes listed here are the ones the worker ships clients for.
URI_PATTERN = r"^(file|https?|s3|gs|gcs)://\S+$"
# user:password@ in the authority: credentials belong in the environment, never in a URI we may show.
USERINFO_PATTERN = r"^[a-z0-9]+://[^/?#]*@"
# Publishing writes, so it needs a filesystem that can write and move: no plain HTTP.
WRITABLE_URI_PATTERN = r"^(file|s3|gs|gcs)://\S+$"
SHA256_PATTERN = r"^[a-f0-9]{64}$"
# Kubernetes object names (RFC 1123 subdomain) and container names (RFC 1123 label).
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENV_VAR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A resource.Quantity as the API server parses it.
_DECIMAL = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY_PATTERN = rf"^(\+|-)?{_DECIMAL}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?{_DECIMAL}))?$"
MAX_URI_LENGTH = 2048


class Model(schema.BaseModel):
    """camelCase on the wire, snake_case in Python; instances are immutable (build new ones instead)."""

    model_config = ConfigDict(frozen=True)

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, JSON values, unset optionals left out."""
        return PydanticModel.model_dump(self, mode="json", by_alias=True, exclude_none=True)


class Rule(NamedTuple):
    """One CEL validation rule; `field_path` points the API server's error at a child field."""

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None  # FieldValueInvalid (default), FieldValueRequired, FieldValueForbidden


def cel(*rules: Rule) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules (`x-kubernetes-validations`)."""
    validations: list[dict[str, str]] = []
    for rule in rules:
        item = {"rule": rule.rule, "message": rule.message}
        if rule.field_path is not None:
            item["fieldPath"] = rule.field_path
        if rule.reason is not None:
            item["reason"] = rule.reason
        validations.append(item)
    return {"x-kubernetes-validations": validations}


def list_map(*keys: str) -> dict[str, Any]:
    """`json_schema_extra` for a list merged by key (server-side apply, strategic merge)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}

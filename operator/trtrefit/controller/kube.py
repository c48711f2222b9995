"""The only module that talks to the API server: the reads and writes of one reconcile pass, on plain dicts,
with the API's errors turned into the few the domain distinguishes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from trtrefit.api.trtmodel import GROUP, PLURAL, VERSION
from trtrefit.controller.naming import FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, MODEL_UID_LABEL

Obj = dict[str, Any]
# No answer at all (the API server restarting, a dropped connection, a timeout): the pass could not even
# write status, so its handler retries it after a short backoff.
API_UNREACHABLE: tuple[type[BaseException], ...] = (
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: changed keys, null for removed ones; {}
    when equal. Lists and scalars are replaced whole, as RFC 7386 does. Status is written with it, in one
    minimal request."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


class KubeError(Exception):
    """An API request failed with an HTTP status; `request` says which (`create Job x`), for status."""

    def __init__(self, status: int, reason: str, message: str, request: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.request = request


class NotFoundError(KubeError):
    pass


class ConflictError(KubeError):
    """409: AlreadyExists on create, Conflict on a stale resourceVersion or failed precondition."""


class InvalidError(KubeError):
    """422: the API server refused the object; the message names the field."""


def _error(exc: ApiException, request: str) -> KubeError:
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    status = int(exc.status or 0)
    kind = {404: NotFoundError, 409: ConflictError, 422: InvalidError}.get(status, KubeError)
    reason = body.get("reason") or exc.reason or ""
    return kind(status, str(reason), str(body.get("message") or exc.body or ""), request)


def _request(fn: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """`create job x`: the client method's verb and kind, and the object's name when the call has one."""
    verb, _, kind = fn.__name__.partition("_namespaced_")
    named = next((a for a in args if isinstance(a, str)), "") if verb in ("read", "patch", "delete") else ""
    if kind.startswith("custom_object") and len(args) > 4:  # (group, version, namespace, plural, name)
        named = str(args[4])
    if verb == "create" and args and isinstance(args[-1], dict):
        named = str(args[-1].get("metadata", {}).get("name", ""))
    return " ".join(part for part in (verb.replace("_", " "), kind.replace("_", " "), named) if part)


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
    try:
        response = fn(*args, _preload_content=False, **kwargs)
    except ApiException as exc:  # every HTTP error status: the pass reports it (kube errors are data here)
        raise _error(exc, _request(fn, args)) from exc
    data: Obj = json.loads(response.data or b"{}")
    return data


class Cluster:
    """Typed access to TRTModels, their refit Jobs and pods, and serving Deployments."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)

    def get_model(self, namespace: str, name: str) -> Obj | None:
        try:
            return _call(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)
        except NotFoundError:
            return None

    def patch_model_status(self, namespace: str, name: str, patch: Obj) -> Obj:
        return _call(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": patch},
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )

    def list_jobs(self, namespace: str, model_uid: str) -> list[Obj]:
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY},{MODEL_UID_LABEL}={model_uid}"
        items: list[Obj] = _call(self.batch.list_namespaced_job, namespace, label_selector=selector)["items"]
        return items

    def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        items: list[Obj] = _call(self.core.list_namespaced_pod, namespace, label_selector=selector)["items"]
        return items

    def create_job(self, namespace: str, job: Obj) -> Obj:
        return _call(self.batch.create_namespaced_job, namespace, job, field_manager=FIELD_MANAGER)

    def read_job(self, namespace: str, name: str) -> Obj | None:
        try:
            return _call(self.batch.read_namespaced_job, name, namespace)
        except NotFoundError:
            return None

    def delete_job(self, namespace: str, name: str, uid: str) -> None:
        """Delete this Job (not a namesake created since) and, in the background, its pods."""
        options = {"propagationPolicy": "Background", "preconditions": {"uid": uid}}
        # NotFound: already gone; Conflict: the uid precondition failed, a new Job took the name.
        with contextlib.suppress(NotFoundError, ConflictError):
            _call(self.batch.delete_namespaced_job, name, namespace, body=options)

    def get_deployment(self, namespace: str, name: str) -> Obj | None:
        try:
            return _call(self.apps.read_namespaced_deployment, name, namespace)
        except NotFoundError:
            return None

    def patch_deployment(self, namespace: str, name: str, patch: Obj) -> Obj:
        return _call(
            self.apps.patch_namespaced_deployment,
            name,
            namespace,
            patch,
            field_manager=FIELD_MANAGER,
            _content_type=STRATEGIC_MERGE_PATCH,
        )

    # InPlace: the serving pods, the token Secret and the desired-refit ConfigMap.

    def get_secret(self, namespace: str, name: str) -> Obj | None:
        """Read by name only: the operator never lists or watches Secrets."""
        try:
            return _call(self.core.read_namespaced_secret, name, namespace)
        except NotFoundError:
            return None

    def create_secret(self, namespace: str, secret: Obj) -> Obj:
        return _call(self.core.create_namespaced_secret, namespace, secret, field_manager=FIELD_MANAGER)

    def get_config_map(self, namespace: str, name: str) -> Obj | None:
        try:
            return _call(self.core.read_namespaced_config_map, name, namespace)
        except NotFoundError:
            return None

    def create_config_map(self, namespace: str, config_map: Obj) -> Obj:
        return _call(
            self.core.create_namespaced_config_map, namespace, config_map, field_manager=FIELD_MANAGER
        )

    def patch_config_map(self, namespace: str, name: str, patch: Obj) -> Obj:
        return _call(
            self.core.patch_namespaced_config_map,
            name,
            namespace,
            patch,
            field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )

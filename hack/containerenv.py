"""A container's command line and environment, built from its pod spec the way a kubelet builds them.

The environment starts empty: a few basics a container image would provide (PATH, HOME, HOSTNAME, LANG),
then envFrom, then env (which wins), with valueFrom resolved through the API (configMapKeyRef,
secretKeyRef, fieldRef) and `$(VAR)` references expanded. Nothing comes from the process that runs the
fake kubelet, so a test cannot pass because of a variable its own shell happened to set.
"""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path
from typing import Any

from kubernetes.client.rest import ApiException

from apiretry import REQUEST_TIMEOUT

ENTRYPOINT = "trtrefit"  # the image's ENTRYPOINT, used when a container sets no command
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ContainerConfigError(Exception):
    """The container cannot start yet, as a kubelet's CreateContainerConfigError: a referenced ConfigMap,
    Secret or key does not exist. The message is the kubelet's wording."""


def resolve_argv(container: Any, bin_dir: Path | None, env: dict[str, str] | None = None) -> list[str]:
    """The container's command line (`$(VAR)` expanded from `env`); with `bin_dir`, the entrypoint
    resolved to this machine's install."""
    argv = [*(container.command or [ENTRYPOINT]), *(container.args or [])]
    if env is not None:
        argv = [expand(arg, env) for arg in argv]
    if bin_dir is not None and Path(argv[0]).name == ENTRYPOINT:
        local = bin_dir / ENTRYPOINT
        argv[0] = str(local) if local.exists() else (shutil.which(ENTRYPOINT) or argv[0])
    return argv


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an unknown one kept, `$$` is `$`."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return env.get(name, match.group(0))

    return _REFERENCE.sub(one, value)


def _data(core: Any, kind: str, name: str, namespace: str, optional: bool | None) -> dict[str, str] | None:
    """A ConfigMap's or Secret's data (Secret values decoded); None when it is missing and optional."""
    try:
        if kind == "Secret":
            raw = core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT).data or {}
            return {k: base64.b64decode(v).decode() for k, v in raw.items()}
        found: dict[str, str] = (
            core.read_namespaced_config_map(name, namespace, _request_timeout=REQUEST_TIMEOUT).data or {}
        )
        return found
    except ApiException as exc:
        if exc.status != 404:
            raise
        if optional:
            return None
        raise ContainerConfigError(f'{kind.lower()} "{name}" not found') from exc


def _key_ref(core: Any, kind: str, ref: Any, namespace: str) -> str | None:
    data = _data(core, kind, ref.name, namespace, ref.optional)
    if data is None:
        return None
    if ref.key not in data:
        if ref.optional:
            return None
        raise ContainerConfigError(f"couldn't find key {ref.key} in {kind} {namespace}/{ref.name}")
    return data[ref.key]


def basic_env(pod: Any, home: Path, bin_dir: Path | None) -> dict[str, str]:
    """What an image and the runtime provide before the pod spec's variables, and nothing else: PATH (the
    venv's bin first, standing in for the image's install), HOME (a per-pod temp dir, as the image's
    workdir), HOSTNAME (the pod name, as the runtime sets it), LANG (the image's locale). The S3 endpoint and
    credentials are NOT injected: they reach the pod only through its spec (the harness puts them in the
    Secret the pod's envFrom names). The one variable a stand-in adds is the refit pods' termination-log
    path (fakekubelet.TERMINATION_ENV), because no file can be mounted at /dev/termination-log here."""
    path = SYSTEM_PATH if bin_dir is None else f"{bin_dir}:{SYSTEM_PATH}"
    return {"PATH": path, "HOME": str(home), "HOSTNAME": pod.metadata.name, "LANG": "C.UTF-8"}


def resolve_env(
    core: Any, pod: Any, container: Any, *, home: Path, bin_dir: Path | None = None, pod_ip: str = ""
) -> dict[str, str]:
    """The container's whole environment; ContainerConfigError when a required reference is missing."""
    ns = pod.metadata.namespace
    env = basic_env(pod, home, bin_dir)
    for source in container.env_from or []:
        if source.secret_ref is not None:
            data = _data(core, "Secret", source.secret_ref.name, ns, source.secret_ref.optional)
        elif source.config_map_ref is not None:
            data = _data(core, "ConfigMap", source.config_map_ref.name, ns, source.config_map_ref.optional)
        else:
            continue
        env.update({(source.prefix or "") + k: v for k, v in (data or {}).items()})
    fields = {
        "metadata.name": pod.metadata.name,
        "metadata.namespace": ns,
        "metadata.uid": pod.metadata.uid,
        "spec.nodeName": pod.spec.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name or "default",
        "status.podIP": pod_ip,
        "status.hostIP": (pod.status.host_ip if pod.status else None) or "127.0.0.1",
    }
    for var in container.env or []:
        source = var.value_from
        value: str | None
        if source is None:
            value = expand(var.value or "", env)
        elif source.secret_key_ref is not None:
            value = _key_ref(core, "Secret", source.secret_key_ref, ns)
        elif source.config_map_key_ref is not None:
            value = _key_ref(core, "ConfigMap", source.config_map_key_ref, ns)
        elif source.field_ref is not None:
            value = fields.get(source.field_ref.field_path, "")
        else:
            value = None  # resourceFieldRef: no resources to report on this machine
        if value is not None:
            env[var.name] = value
    return env

"""Run the helm binary hack/build-tools.sh built, and read the chart's rendered manifests."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import cache_root, read_versions

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "trt-refit-operator"
# Helm built with `go install` reports Kubernetes v1.20 as its default target; render for the one we test.
KUBE_VERSION = read_versions()["KUBERNETES_VERSION"].lstrip("v")

Manifest = dict[str, Any]


def helm_binary() -> Path:
    """The pinned helm from the tools cache; skips (naming the fix) when it has not been built."""
    directory = cache_root() / f"helm-{read_versions()['HELM_VERSION']}"
    if not (directory / ".complete").is_file():
        pytest.skip(f"helm is not built in {directory}: run `make tools`")
    return directory / "helm"


def helm_env(home: Path) -> dict[str, str]:
    """Keep helm's cache/config/data out of the user's home."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def set_args(values: Mapping[str, Any]) -> list[str]:
    """--set-json arguments, one per top-level key (values stay typed: no string coercion surprises)."""
    import json

    args: list[str] = []
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def run_helm(
    args: Sequence[str], home: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_binary()), *args],
        capture_output=True,
        text=True,
        env={**helm_env(home), **(env or {})},
        timeout=120,
        check=False,
    )


def template(
    home: Path,
    values: Mapping[str, Any] | None = None,
    release: str = "trt",
    namespace: str = "trtrefit-system",
) -> list[Manifest]:
    """`helm template` the chart; fails the test with helm's message when rendering fails."""
    result = run_helm(
        [
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
            *set_args(values or {}),
        ],
        home,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def template_error(home: Path, values: Mapping[str, Any]) -> str:
    """`helm template` with values that must be refused; returns helm's error text."""
    result = run_helm(
        ["template", "trt", str(CHART), "--kube-version", KUBE_VERSION, *set_args(values)], home
    )
    assert result.returncode != 0, f"helm accepted {dict(values)}"
    return result.stderr


def by_kind(manifests: Sequence[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: Sequence[Manifest], kind: str) -> Manifest:
    found = by_kind(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, got {[m['metadata']['name'] for m in found]}"
    return found[0]


def helm_on_cluster(
    cluster_env: Mapping[str, str], home: Path, args: Sequence[str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """helm against a real API server (KUBECONFIG from `cluster_env`); fails the test on a non-zero exit."""
    result = subprocess.run(
        [str(helm_binary()), *args],
        capture_output=True,
        text=True,
        env={**cluster_env, **helm_env(home), "PATH": cluster_env.get("PATH", "/usr/bin:/bin")},
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result

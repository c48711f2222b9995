"""kstatus, the real one: sigs.k8s.io/cli-utils/pkg/kstatus (what Flux's kustomize-controller waits with),
through the small Go program in tests/chart/kstatus/. Built once per source digest into the tools cache
outside the checkout (like hack/build-tools.sh does), through the Go module proxy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from localcluster import cache_root

SOURCE = Path(__file__).resolve().parent / "kstatus"


def kstatus_binary() -> Path:
    """The built kstatus-check; built the first time (about a minute on 2 cores, module cache cold)."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((SOURCE / name).read_bytes())
    target = cache_root() / f"kstatus-check-{digest.hexdigest()[:12]}" / "kstatus-check"
    if target.is_file():
        return target
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain on PATH: kstatus-check cannot be built (the control plane needs Go too)")
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".build-kstatus-", dir=target.parent.parent))
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly", "CGO_ENABLED": "0"}
    result = subprocess.run(
        [go, "build", "-o", str(build / "kstatus-check"), "."],
        cwd=SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    if result.returncode != 0:
        shutil.rmtree(build, ignore_errors=True)
        raise AssertionError(f"building {SOURCE} failed:\n{result.stderr}")
    try:
        build.rename(target.parent)
    except OSError:  # another process published it first
        shutil.rmtree(build, ignore_errors=True)
    return target


def kstatus(objects: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """kstatus's {'status': Current|InProgress|Failed|Terminating|..., 'message'} for each object."""
    lines = "".join(json.dumps(obj, default=str) + "\n" for obj in objects)
    result = subprocess.run(
        [str(kstatus_binary())], input=lines, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]

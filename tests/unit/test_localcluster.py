"""Control-plane tooling without starting anything: the build script's failure modes and the cache rules."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import lifeline
from localcluster import ClusterError, Tools, read_versions, write_kubeconfig
from supervisor import Supervisor, registered

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "hack" / "build-tools.sh"


def test_versions_are_pinned_in_one_file() -> None:
    versions = read_versions()
    assert set(versions) == {"KUBERNETES_VERSION", "ETCD_VERSION", "KWOK_VERSION", "HELM_VERSION"}
    assert versions["KUBERNETES_VERSION"].startswith("v1.35.")
    assert versions["ETCD_VERSION"].startswith("v3.6.")
    assert versions["KWOK_VERSION"].startswith("v0.8.")
    assert versions["HELM_VERSION"].startswith("v3.")


def test_half_built_cache_is_refused(tmp_path: Path) -> None:
    v = read_versions()
    for name, key in [
        ("kubernetes", "KUBERNETES_VERSION"),
        ("etcd", "ETCD_VERSION"),
        ("kwok", "KWOK_VERSION"),
        ("helm", "HELM_VERSION"),
    ]:
        (tmp_path / f"{name}-{v[key]}").mkdir()
        if name != "kwok":  # kwok's build "died" before it was stamped
            (tmp_path / f"{name}-{v[key]}" / ".complete").touch()
    with pytest.raises(ClusterError, match=r"kwok-v0\.8.*not built|not built.*kwok") as info:
        Tools.from_cache(tmp_path)
    assert "make tools" in str(info.value)
    (tmp_path / f"kwok-{v['KWOK_VERSION']}" / ".complete").touch()
    assert Tools.from_cache(tmp_path).kwok == tmp_path / f"kwok-{v['KWOK_VERSION']}" / "kwok"


def test_build_without_go_says_what_to_do(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TRTREFIT_CACHE": str(tmp_path / "cache")}
    assert shutil.which("go", path=env["PATH"]) is None
    proc = subprocess.run([bash, str(BUILD)], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "no Go toolchain on PATH" in proc.stderr
    assert "Install Go" in proc.stderr


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")
def test_failed_module_download_leaves_no_half_built_tool(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TRTREFIT_CACHE": str(tmp_path / "cache"),
        "GOPROXY": "off",
        "GOMODCACHE": str(tmp_path / "mod"),
        "GOFLAGS": "-mod=mod",
    }
    proc = subprocess.run(
        ["bash", str(BUILD)], env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 1
    assert "building etcd v" in proc.stderr and "failed" in proc.stderr
    assert "Go module proxy" in proc.stderr
    # etcd is built first: nothing may be left of it, neither a tool directory nor a temp build dir.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == []


def test_kubeconfig_names_server_ca_and_token(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, "https://127.0.0.1:1234", tmp_path / "ca.crt", "tok")
    loaded = yaml.safe_load(path.read_text())
    assert loaded["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:1234"
    assert loaded["users"][0]["user"]["token"] == "tok"
    assert path.stat().st_mode & 0o077 == 0


def test_supervisor_records_owner_and_keeps_a_stopped_process_in_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRTREFIT_RUNS", str(tmp_path / "runs"))
    procs = Supervisor(tmp_path / "state")
    first = procs.spawn("first", ["sleep", "60"])
    procs.spawn("second", ["sleep", "60"])
    try:
        record = json.loads(procs.pid_file.read_text())["first"]
        me = os.getpid()
        assert record == [first, lifeline.start_time(first), me, lifeline.start_time(me)]
        assert registered() == [(tmp_path / "state").resolve()]
        assert procs.strays() == {}  # its owner (this process) lives
        procs.stop_one("first", grace=1)
        assert not lifeline.alive(first) and list(procs.running()) == ["second"]
        procs.check_alive()  # stopped on purpose: not an error
        again = procs.spawn("first", ["sleep", "60"])
        assert list(json.loads(procs.pid_file.read_text())) == ["first", "second"]  # the stop order holds
        assert procs.running() == {"first": again, "second": procs.running()["second"]}
        with pytest.raises(ClusterError, match="no process named 'third'"):
            procs.stop_one("third")
    finally:
        stopped = procs.stop(grace=1)
    assert set(stopped) == {"first", "second"} and not procs.pid_file.exists() and registered() == []

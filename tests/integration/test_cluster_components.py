"""LocalCluster stops and starts one component keeping its data: the fault tests' lever. One restart each of
etcd and kube-apiserver on a control plane of this module's own; a client made before the restart keeps
working after it (same port, CA and token) and what was written before is still there."""

from __future__ import annotations

import socket

import pytest
from kubernetes import client

from localcluster import LOOPBACK, ClusterError, LocalCluster
from tests.kubehelpers import wait_for

pytestmark = pytest.mark.integration


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((LOOPBACK, port)) == 0


def _config_map(admin: client.ApiClient, name: str) -> dict[str, str]:
    data: dict[str, str] = client.CoreV1Api(admin).read_namespaced_config_map(name, "default").data
    return data


def test_etcd_restart_keeps_data(own_cluster: LocalCluster, admin: client.ApiClient) -> None:
    core = client.CoreV1Api(admin)
    core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="before-etcd"), data={"k": "v"})
    )
    old_pid = own_cluster.running_pids()["etcd"]
    own_cluster.stop_component("etcd", grace=1)  # then SIGKILL: etcd takes ~7 s on SIGTERM
    assert "etcd" not in own_cluster.running_pids()
    assert not _listening(own_cluster.ports["etcd"])
    with pytest.raises(ClusterError, match="already running"):
        own_cluster.start_component("kube-apiserver")  # it never stopped
    own_cluster.start_component("etcd")
    assert own_cluster.running_pids()["etcd"] != old_pid
    # The API server reconnects by itself; the object written before the outage is still there.
    wait_for(
        lambda: _config_map(admin, "before-etcd") == {"k": "v"}, timeout=30, what="read after etcd restart"
    )


def test_apiserver_restart_same_port_and_credentials(
    own_cluster: LocalCluster, admin: client.ApiClient
) -> None:
    old_pid = own_cluster.running_pids()["kube-apiserver"]
    own_cluster.stop_component("kube-apiserver", grace=1)
    assert not _listening(own_cluster.ports["apiserver"])
    assert set(own_cluster.running_pids()) == {"etcd", "kube-controller-manager", "kube-scheduler", "kwok"}
    own_cluster.start_component("kube-apiserver")
    assert own_cluster.running_pids()["kube-apiserver"] != old_pid
    # The client made before the restart (same server URL, CA file and token) works unchanged.
    core = client.CoreV1Api(admin)
    core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="after-apiserver"), data={"a": "b"})
    )
    assert _config_map(admin, "after-apiserver") == {"a": "b"}


def test_unknown_component_is_refused_by_name(own_cluster: LocalCluster) -> None:
    with pytest.raises(ClusterError, match=r"unknown component 'apiserver'.*kube-apiserver"):
        own_cluster.stop_component("apiserver")
    assert len(own_cluster.running_pids()) == 5

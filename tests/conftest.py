"""Shared fixtures: one real local control plane per test session, a fresh namespace per test."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import pytest
from kubernetes import client, config

from localcluster import LocalCluster, running_cluster
from tests.kubehelpers import wait_for


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """etcd + kube-apiserver + controller-manager + scheduler + kwok (two fake GPU nodes), on loopback."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as local:
        yield local


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 protocol server (moto's server mode) on loopback; its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def kube_api(cluster: LocalCluster) -> Iterator[client.ApiClient]:
    """An API client with cluster-admin rights."""
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube_api: client.ApiClient) -> Iterator[str]:
    """A new namespace, ready for pods (its default ServiceAccount exists), deleted after the test."""
    core = client.CoreV1Api(kube_api)
    stem = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{secrets.token_hex(3)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=20,
        what=f"default ServiceAccount in {name}",
    )
    yield name
    core.delete_namespace(name)

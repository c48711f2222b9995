"""Fixtures for the operator's integration tests on the session's local control plane: the CRD (generated,
committed) installed once, and `trtrefit operator` run as a real subprocess watching the test's namespace."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

import lifeline
from localcluster import LocalCluster, free_port, running_cluster
from tests.kubehelpers import wait_for
from trtrefit.api.crd import CRD_PATH
from trtrefit.api.trtmodel import GROUP, PLURAL, VERSION

REPO = Path(__file__).resolve().parents[2]
WORKER_IMAGE = "registry.example/trtrefit-worker:test"


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A control plane of the test module's own, for tests that install cluster-wide objects (a chart's CRD
    and ClusterRoles) that must not meet the session cluster's."""
    with running_cluster(tmp_path_factory.mktemp("own-cluster")) as local:
        yield local


@pytest.fixture(scope="module")
def admin(own_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    """Cluster-admin client for `own_cluster`."""
    api = config.new_client_from_config(config_file=str(own_cluster.kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="session")
def trtmodel_crd(kube_api: client.ApiClient) -> str:
    """crds/trtmodel.yaml applied to the session cluster, Established."""
    crd = yaml.safe_load((REPO / CRD_PATH).read_text())
    ext = client.ApiextensionsV1Api(kube_api)
    name: str = crd["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(crd)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        crd["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, crd)

    def established() -> bool:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, timeout=30, what=f"CRD {name} Established")
    return name


@dataclass
class OperatorProcess:
    """`trtrefit operator --namespace NS` as a subprocess; stop/start to simulate a crash and a restart."""

    cluster: LocalCluster
    namespace: str
    log: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        argv = [
            sys.executable, "-m", "trtrefit.cli", "operator",
            "--namespace", self.namespace,
            "--kubeconfig", str(self.cluster.kubeconfig),
            "--metrics-port", str(self.metrics_port),
            "--verbose",
        ]  # fmt: skip
        env = {**self.cluster.env(), "TRTREFIT_WORKER_IMAGE": WORKER_IMAGE, **self.extra_env}
        with self.log.open("ab") as out:
            # Tied to this test run: it dies with pytest, also when pytest is SIGKILLed (hack/lifeline.py).
            self.process = subprocess.Popen(
                lifeline.command(argv), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (a graceful exit) or SIGKILL (a crash), then wait for the process."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _delete_models(kube_api: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(kube_api)
    with contextlib.suppress(ApiException):
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)

    def gone() -> bool:
        return not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]

    wait_for(gone, timeout=30, what=f"TRTModels in {namespace} deleted (the operator removes its finalizer)")


@pytest.fixture
def operator(
    *,
    cluster: LocalCluster,
    kube_api: client.ApiClient,
    namespace: str,
    trtmodel_crd: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[OperatorProcess]:
    """The operator watching the test's namespace; its TRTModels are deleted through it at the end."""
    op = OperatorProcess(cluster, namespace, tmp_path / "operator.log")
    op.start()
    try:
        yield op
        if not op.alive():
            op.start()
        _delete_models(kube_api, namespace)
    finally:
        op.stop()
        if os.environ.get("TRTREFIT_SHOW_OPERATOR_LOG") or request.node.stash.get(_FAILED, False):
            sys.stderr.write(f"\n--- operator log ({op.log}) ---\n{op.output()[-20000:]}\n")


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember a failed test, so the operator fixture prints the operator's log with it."""
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True
    return report

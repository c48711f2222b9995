"""The whole flow on the local control plane with the CPU backend: the real operator (a subprocess), a real
S3 protocol server, a bundle made by `trtrefit compile`, and hack/fakekubelet.py running each refit pod's
real `trtrefit refit` command from the pod spec the operator created."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import s3fs
from kubernetes import client

from demo import MODEL, S3_CREDENTIALS, make_bundle, upload
from fakekubelet import FakeKubelet
from inplace import Outputs, eager, load_inputs

# The operator fixtures of the integration suite, shared: the CRD applied once, `trtrefit operator` per test.
from tests.integration.conftest import _FAILED as FAILED
from tests.integration.conftest import operator, pytest_runtest_makereport, trtmodel_crd

__all__ = ["operator", "pytest_runtest_makereport", "trtmodel_crd"]


@dataclass(frozen=True)
class Artifacts:
    """The bundle and checkpoints in S3 (s3://models/demo/..., s3://ckpt/demo/<name>.safetensors)."""

    endpoint: str
    local: dict[str, Path]

    def fs(self) -> s3fs.S3FileSystem:
        return s3fs.S3FileSystem(
            key=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
        )


@pytest.fixture(scope="session")
def artifacts(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    out = tmp_path_factory.mktemp("bundle")
    checkpoints = make_bundle(out)
    upload(s3_server, out / "bundle", checkpoints)
    return Artifacts(endpoint=s3_server, local=checkpoints)


@pytest.fixture(scope="session")
def wrong_eps_source(artifacts: Artifacts, tmp_path_factory: pytest.TempPathFactory) -> str:
    """s3://models/demo/source-eps.pt2: the demo model exported like the bundle's source, but with every
    BatchNorm's eps 0.5 instead of the engine's (1e-5, 1e-3). Same weights, names and shapes, all finite:
    only its numerics are wrong, so a refit verified against it must fail on the tolerances."""
    import torch
    from safetensors.torch import load_file

    from trtrefit.worker.samples import build

    model = build(MODEL, seed=0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = 0.5
    inputs = load_file(str(artifacts.local["step-1"].parent / "inputs.safetensors"))
    path = tmp_path_factory.mktemp("wrong-eps") / "source-eps.pt2"
    torch.export.save(torch.export.export(model, tuple(inputs.values())), str(path))
    artifacts.fs().put(str(path), "models/demo/source-eps.pt2")
    return "s3://models/demo/source-eps.pt2"


@dataclass(frozen=True)
class Answers:
    """The bundle's sample inputs, and what eager PyTorch computes from them with each good checkpoint's
    weights (the model, `load_state_dict`, the inputs): what a serving pod must answer."""

    inputs: Outputs
    references: dict[str, Outputs]


@pytest.fixture(scope="session")
def answers(artifacts: Artifacts) -> Answers:
    bundle = artifacts.local["step-1"].parent
    inputs = load_inputs(bundle / "inputs.safetensors")
    good = ("step-1", "step-2")
    return Answers(inputs, {name: eager(MODEL, artifacts.local[name], inputs) for name in good})


@pytest.fixture
def kubelet(
    kube_api: client.ApiClient,
    namespace: str,
    artifacts: Artifacts,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[FakeKubelet]:
    """S3 credentials for the refit and serving pods, and the fake kubelet running them."""
    client.CoreV1Api(kube_api).create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="s3-credentials"),
            string_data={**S3_CREDENTIALS, "AWS_ENDPOINT_URL": artifacts.endpoint},
        ),
    )
    fake = FakeKubelet(api=kube_api, namespaces=[namespace], log_dir=tmp_path / "pods")
    with fake.running():
        yield fake
    if request.node.stash.get(FAILED, False):  # the serving pods' own output explains most failures
        sys.stderr.write(fake.pod_logs())

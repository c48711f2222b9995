"""docs/serving.md shows what ships: its Deployment snippet is a valid Deployment whose container runs
`trtrefit serve` with the environment names, ConfigMap/Secret keys, port and probe paths the code uses."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import yaml

from trtrefit.api.serving import DEFAULT_PORT, DESIRED_ENV, DESIRED_KEY, TOKEN_ENV, TOKEN_KEY
from trtrefit.cli import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def _deployment() -> dict[str, object]:
    block = re.search(r"```yaml\n(apiVersion: apps/v1\nkind: Deployment\n.*?)```", DOC.read_text(), re.S)
    assert block, "docs/serving.md has no Deployment example"
    document: dict[str, object] = yaml.safe_load(block.group(1))
    return document


def test_deployment_snippet_is_valid_and_uses_the_codes_names() -> None:
    deployment = _deployment()
    kubernetes_validate.validate(deployment, "1.35.0", strict=True)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]  # type: ignore[index]
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve" and args.port == DEFAULT_PORT
    env = {item["name"]: item["valueFrom"] for item in container["env"]}
    name = args.model_name
    assert env[DESIRED_ENV] == {"configMapKeyRef": {"name": f"{name}-trtrefit", "key": DESIRED_KEY}}
    assert env[TOKEN_ENV] == {"secretKeyRef": {"name": f"{name}-trtrefit-token", "key": TOKEN_KEY}}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": DEFAULT_PORT}
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def test_every_metric_in_the_table_exists() -> None:
    from trtrefit.serving.metrics import ServingMetrics

    names = set(re.findall(r"^\| `(trtrefit_serve_\w+)`", DOC.read_text(), re.M))
    exposed = ServingMetrics("m").exposition().decode()
    declared = {line.split()[2] for line in exposed.splitlines() if line.startswith("# TYPE")}
    declared |= {n + "_total" for n in declared} | {n + "_info" for n in declared}
    assert names and names <= declared, names - declared

"""Platform-fault benchmark: how long a TRTModel takes to be Ready again after the control plane's own faults.

    python bench/platform_faults.py [--rounds 3] [--down 4] [--out bench/results]

A fresh local control plane (hack/localcluster.py), the CRD, a real S3 server (moto, a process of its own)
holding the demo bundle, `trtrefit operator` as a subprocess and hack/fakekubelet.py in this process. Each
round runs the two scenarios of hack/faults.py (the same faults, at the same moments, as
tests/e2e/test_platform_faults.py), each in a namespace of its own:

- Restart strategy: kube-apiserver stopped --down s while the first refit runs; etcd (data kept) stopped
  while the second refit runs; kube-apiserver stopped while the third rollout is under way;
- InPlace (2 replicas of `trtrefit serve`): kube-apiserver stopped while the canary refits; the process of a
  pod refitting killed (SIGKILL: the container crashes and restarts in its pod).

Measured per fault: `back_to_ready_s`, from the component serving again (start_component returned:
kube-apiserver /readyz ok, etcd /health true) until the TRTModel is Ready on the new checkpoint (InPlace: with
every ready pod reporting it); for the killed pod, from the kill. Also `down_s`, from the stop until the
component serves again (--down plus its start-up). Results: <out>/platform_faults.json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO)]

from controlplane import Operator, machine, namespace, summary  # noqa: E402
from demo import S3_CREDENTIALS, make_bundle, upload, wait_port  # noqa: E402
from fakekubelet import FakeKubelet  # noqa: E402
from faults import Recovery, Scene, inplace_scenario, restart_scenario  # noqa: E402
from inplace_rollout import commit, versions  # noqa: E402
from localcluster import LocalCluster, Tools, free_port  # noqa: E402
from tests.kubehelpers import wait_for  # noqa: E402


def measure(rounds: int, down_s: float, tmp: Path) -> list[Recovery]:
    port = free_port()
    s3 = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    credentials = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    files = make_bundle(tmp)
    upload(credentials["AWS_ENDPOINT_URL"], tmp / "bundle", files)
    first_sha256 = hashlib.sha256(files["step-1"].read_bytes()).hexdigest()
    cluster = LocalCluster(workdir=tmp / "cluster", tools=Tools.from_cache())
    cluster.start()
    operator, kubelet = None, None
    try:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        ext = client.ApiextensionsV1Api(api)
        crd = ext.create_custom_resource_definition(
            yaml.safe_load((REPO / "crds" / "trtmodel.yaml").read_text())
        )
        wait_for(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in ext.read_custom_resource_definition(crd.metadata.name).status.conditions or []
            ),
            30,
            "the CRD Established",
        )
        names = [f"{kind}-{i}" for i in range(rounds) for kind in ("restart", "inplace")]
        for ns in names:
            namespace(api, ns)
            secret = client.V1Secret(
                metadata=client.V1ObjectMeta(name="s3-credentials"), string_data=credentials
            )
            client.CoreV1Api(api).create_namespaced_secret(ns, secret)
        operator = Operator(cluster, names, tmp / "operator.log")
        kubelet = FakeKubelet(api=api, namespaces=names, log_dir=tmp / "pods")
        recoveries: list[Recovery] = []
        with kubelet.running():
            for i in range(rounds):
                scene = Scene(cluster, api, f"restart-{i}", kubelet, down_s)
                try:
                    done = restart_scenario(scene, first_sha256)
                    done += inplace_scenario(Scene(cluster, api, f"inplace-{i}", kubelet, down_s))
                except AssertionError as exc:  # a round that did not recover: keep the rounds that did
                    print(f"round {i + 1} did not finish, stopping: {exc}", file=sys.stderr, flush=True)
                    break
                recoveries += done
                print(f"round {i + 1}/{rounds}: " + ", ".join(
                    f"{r.fault} {r.back_to_ready_s} s" for r in done
                ), flush=True)  # fmt: skip
        return recoveries
    finally:
        if operator is not None:
            operator.stop()
        cluster.stop()
        s3.terminate()
        s3.wait(30)


def results(rounds: int, down_s: float, recoveries: list[Recovery]) -> dict[str, Any]:
    faults: dict[str, dict[str, Any]] = {}
    for r in recoveries:
        entry = faults.setdefault(r.fault, {"back_to_ready_s": [], "down_s": [], "caught": []})
        entry["back_to_ready_s"].append(r.back_to_ready_s)
        entry["down_s"].append(r.down_s)
        entry["caught"].append(r.caught)
    return {
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python bench/platform_faults.py " + " ".join(sys.argv[1:]),
        "versions": versions(),
        "machine": machine(),
        "n": min(len(e["back_to_ready_s"]) for e in faults.values()) if faults else 0,
        "rounds_asked": rounds,
        "outage_s": down_s,
        "faults": {
            name: {
                "back_to_ready": summary(e["back_to_ready_s"]),
                "down": summary(e["down_s"]) if any(e["down_s"]) else None,
                "raw_back_to_ready_s": e["back_to_ready_s"],
                "raw_down_s": e["down_s"],
                "caught": e["caught"],
            }
            for name, e in faults.items()
        },
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Platform faults: back to Ready ({result['date']}, {result['commit'][:12]}, n={result['n']})",
        "",
        f"`{result['command']}`; each outage {result['outage_s']} s plus the component's start-up; "
        f"{result['machine']['cores']} cores ({result['machine']['cpu']}).",
        "",
        "| fault | back → Ready median (s) | max (s) | down, stop → serving again, median (s) | n |",
        "|---|---|---|---|---|",
    ]
    for name, fault in result["faults"].items():
        back, down = fault["back_to_ready"], fault["down"]
        down_text = f"{down['median_s']:.1f}" if down else "— (a killed process: timed from the kill)"
        lines.append(f"| {name} | {back['median_s']:.2f} | {back['max_s']:.2f} | {down_text} | {back['n']} |")
    lines += [
        "",
        "back → Ready: from the component serving again (kube-apiserver /readyz, etcd /health) until the "
        "TRTModel is Ready on the new checkpoint (InPlace: every ready pod reports it); for the killed pod, "
        "from the kill.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs of each fault (default 3)")
    parser.add_argument(
        "--down", type=float, default=4.0, help="seconds each component stays down (default 4)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trtrefit-faults-bench-") as tmp:
        recoveries = measure(args.rounds, args.down, Path(tmp))
    result = results(args.rounds, args.down, recoveries)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "platform_faults.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "platform_faults.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

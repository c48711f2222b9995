"""`make demo`: a TRTModel rolled over end to end on a local control plane; CPU backend, real parts.

1. a local control plane (hack/localcluster.py) in .demo/cluster
2. the Helm chart installed with its CRD; the operator runs on this machine with the chart's own
   ServiceAccount token (kwok runs no containers), watching the namespace `demo`
3. a real S3 protocol server (moto) on 127.0.0.1 holding a model bundle made by `trtrefit compile`
4. a serving Deployment and a TRTModel. InPlace (the default): three pods run `trtrefit serve`, each a real
   process on a loopback address of its own, run by hack/fakekubelet.py; a client keeps asking them.
   Restart (`--strategy Restart`): kwok runs the serving pods, and hack/fakekubelet.py runs each refit
   pod's real `trtrefit refit` command and writes the pod status like a kubelet
5. a checkpoint bump, and the rollover: progress, then each pod's answer before and after (InPlace: the
   same pods, no restarts, the new checkpoint's answers) or the Deployment's new engine (Restart)

    python hack/demo.py [--strategy InPlace|Restart]      python hack/demo.py down

Everything keeps running afterwards for you to try more; `make demo-down` stops it all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

import inplace
from localcluster import LOOPBACK, LocalCluster, Tools, free_port, write_kubeconfig
from supervisor import Supervisor

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".demo"
CHART = REPO / "charts" / "trt-refit-operator"
RELEASE, SYSTEM_NS, DEMO_NS = "trt-refit-operator", "trtrefit-system", "demo"
MODEL = "trtrefit.worker.samples:small_cnn"
INPUT_SHAPE = "8,3,32,32"
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
GROUP, VERSION, PLURAL = "trtrefit.dev", "v1alpha1", "trtmodels"
FIRST, SECOND = "s3://ckpt/demo/step-1.safetensors", "s3://ckpt/demo/step-2.safetensors"
TRTREFIT = str(Path(sys.executable).parent / "trtrefit")
SERVER, INPLACE_REPLICAS = "demo-server", 3


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def run(argv: Sequence[str], env: dict[str, str] | None = None, quiet: bool = False) -> str:
    proc = subprocess.run(list(argv), env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"demo: `{' '.join(argv)}` failed:\n{proc.stdout}{proc.stderr}")
    if not quiet and proc.stdout.strip():
        print(proc.stdout.rstrip())
    return proc.stdout


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.1)
    sys.exit(f"demo: nothing listens on {LOOPBACK}:{port} after {timeout:.0f} s")


# ------------------------------------------------------------------------------------------ artifacts


def make_bundle(out: Path) -> dict[str, Path]:
    """`trtrefit compile` (CPU backend) plus checkpoints: two good ones and two bad ones to try."""
    run(
        [
            TRTREFIT,
            "compile",
            "--model",
            MODEL,
            "--input-shape",
            INPUT_SHAPE,
            "--backend",
            "exported",
            "--output",
            str(out / "bundle"),
        ],
        quiet=True,
    )
    checkpoints = {
        "step-1": ("1", "jitter"),
        "step-2": ("2", "jitter"),
        "wrong-shape": ("3", "wrong-shape"),
        "nonfinite": ("4", "nonfinite"),
    }
    files = {name: out / "bundle" / f"{name}.safetensors" for name in checkpoints}
    for name, (seed, perturb) in checkpoints.items():
        run(
            [
                TRTREFIT,
                "checkpoint",
                "--model",
                MODEL,
                "--seed",
                seed,
                "--perturb",
                perturb,
                "--output",
                str(files[name]),
            ],
            quiet=True,
        )
    files["overflow"] = write_overflow(files["step-1"], out / "bundle" / "overflow.safetensors")
    return files


def write_overflow(good: Path, out: Path) -> Path:
    """Finite weights whose outputs overflow float32 (the head's weights at 3e38): no check before the refit
    can tell, only verification does; a serving pod applies them, fails verification and rolls back."""
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(good))
    head = [name for name, tensor in state.items() if tensor.dim() == 2][-1]
    state[head] = torch.full_like(state[head], 3e38)
    save_file(state, str(out))
    return out


def upload(endpoint: str, bundle: Path, checkpoints: dict[str, Path]) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(
        key=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=endpoint,
    )
    for bucket in ("models", "ckpt"):
        fs.mkdir(bucket)
    for name in ("engine.ep", "source.pt2", "inputs.safetensors"):
        fs.put(str(bundle / name), f"models/demo/{name}")
    for name, path in checkpoints.items():
        fs.put(str(path), f"ckpt/demo/{path.name}")
        print(f"  s3://ckpt/demo/{path.name}  ({name})")


# ------------------------------------------------------------------------------------------ objects


def serving_deployment() -> dict[str, Any]:
    labels = {"app": "demo-server"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "demo-server"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "server",
                            "image": "ghcr.io/example/trt-server:1",
                            "env": [{"name": "TRT_ENGINE_URI", "value": "s3://models/demo/engine.ep"}],
                        }
                    ]
                },
            },
        },
    }


def trtmodel(checkpoint: str, refit_service_account: str, strategy: str = "Restart") -> dict[str, Any]:
    """The demo's TRTModel; InPlace refits the serving pods where they run, one canary then 25% at a time."""
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TRTModel",
        "metadata": {"name": "demo"},
        "spec": {
            "engine": {"uri": "s3://models/demo/engine.ep"},
            "source": {"uri": "s3://models/demo/source.pt2"},
            "checkpoint": {"uri": checkpoint},
            "verify": {
                "inputs": {"uri": "s3://models/demo/inputs.safetensors"},
                "rtol": 0.01,
                "atol": 0.01,
                "minCosineSimilarity": 0.999,
            },
            "publish": {"uri": "s3://models/demo/refits/"},
            "refitJob": {
                "envFrom": [{"secretRef": {"name": "s3-credentials"}}],
                "serviceAccountName": refit_service_account,
                "device": "cpu",
            },
            "serving": {
                "deploymentName": "demo-server",
                "containerName": "server",
                "engineEnvVar": "TRT_ENGINE_URI",
            },
        },
    }
    if strategy == "InPlace":
        body["spec"]["rollout"] = {"strategy": "InPlace", "maxConcurrent": "25%", "port": 8080}
    return body


def operator_kubeconfig(api: client.ApiClient, cluster: LocalCluster, path: Path) -> None:
    """A kubeconfig with a token of the chart's operator ServiceAccount: the operator gets only its RBAC."""
    token = (
        client.CoreV1Api(api)
        .create_namespaced_service_account_token(
            RELEASE,
            SYSTEM_NS,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=86400)
            ),
        )
        .status.token
    )
    write_kubeconfig(
        path, cluster.server, cluster.ca_file, token, user=f"system:serviceaccount:{SYSTEM_NS}:{RELEASE}"
    )


# ------------------------------------------------------------------------------------------ watching


def show_progress(
    custom: client.CustomObjectsApi, until: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    """Print a `kubectl get trtm -w`-style line whenever phase, pods or the leading condition change."""
    print(f"{'NAME':<6} {'PHASE':<11} {'CHECKPOINT':<36} {'READY':<6} {'CURRENT':<8} MESSAGE")
    last, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, DEMO_NS, PLURAL, "demo")
        status = obj.get("status") or {}
        conds = {c["type"]: c for c in status.get("conditions", [])}
        ready = conds.get("Ready", {}).get("status", "-")
        lead = next(
            (
                conds[t]
                for t in ("Stalled", "Reconciling", "Ready")
                if conds.get(t, {}).get("status") == "True"
            ),
            conds.get("Ready", {}),
        )
        pods = (status.get("pods") or {}).get("summary", "-")
        line = (
            status.get("phase", "-"),
            obj["spec"]["checkpoint"]["uri"],
            ready,
            pods,
            lead.get("message", ""),
        )
        current = status.get("observedGeneration") == obj["metadata"]["generation"]
        if line != last and current:  # a status from before the last spec change says nothing new
            print(f"{'demo':<6} {line[0]:<11} {line[1]:<36} {line[2]:<6} {line[3]:<8} {line[4]}", flush=True)
            last = line
        if until(obj):
            return dict(obj)
        time.sleep(0.3)
    sys.exit(f"demo: the TRTModel did not get there in {timeout:.0f} s; see {STATE / 'logs'}")


def settled_on(checkpoint: str) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
        serving = ((status.get("serving") or {}).get("checkpoint") or {}).get("uri")
        return bool(
            ready
            and serving == checkpoint
            and status.get("observedGeneration") == obj["metadata"]["generation"]
        )

    return check


# ------------------------------------------------------------------------------------------ main


def start_cluster(tools: Tools) -> LocalCluster:
    say("1/6 local control plane: etcd, kube-apiserver, controller-manager, scheduler, kwok (2 GPU nodes)")
    # Detached, like everything the demo starts: it keeps running after this script for "Try next";
    # `make demo-down` stops it by its pid records.
    cluster = LocalCluster(workdir=STATE / "cluster", tools=tools, detached=True)
    cluster.start()
    run([str(tools.kubectl), "get", "nodes", "-L", "nvidia.com/gpu.product"], env=cluster.env())
    return cluster


def install_chart_and_operator(cluster: LocalCluster, api: client.ApiClient, procs: Supervisor) -> None:
    say("2/6 helm install the chart (CRD, RBAC, ServiceAccounts); the operator runs here with its token")
    env = cluster.env()
    run([str(cluster.tools.kubectl), "create", "namespace", DEMO_NS], env=env, quiet=True)
    helm = [str(cluster.tools.helm), "install", RELEASE, str(CHART), "--namespace", SYSTEM_NS]
    # replicaCount=0: kwok runs no containers, so the operator runs on this machine instead, with the chart's
    # ServiceAccount token (the chart's RBAC is what it gets).
    run(
        [*helm, "--create-namespace", "--set", "replicaCount=0", "--set", f"watchNamespaces={{{DEMO_NS}}}"],
        env=env,
        quiet=True,
    )
    run([str(cluster.tools.helm), "list", "--namespace", SYSTEM_NS], env=env)
    operator_kc = STATE / "operator.kubeconfig"
    operator_kubeconfig(api, cluster, operator_kc)
    metrics_port = free_port()
    procs.spawn(
        "operator",
        [
            TRTREFIT,
            "operator",
            "--kubeconfig",
            str(operator_kc),
            "--namespace",
            DEMO_NS,
            "--metrics-port",
            str(metrics_port),
            "--worker-image",
            "ghcr.io/trtrefit/trt-refit-worker:0.1.0",
        ],
    )
    print(f"  operator logs: {procs.log_file('operator')}; metrics: http://{LOOPBACK}:{metrics_port}/metrics")


def start_s3_with_bundle(procs: Supervisor) -> str:
    say("3/6 S3 server on loopback (moto) and a model bundle from `trtrefit compile` (CPU backend)")
    port = free_port()
    procs.spawn("s3", [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)])
    wait_port(port)
    endpoint = f"http://{LOOPBACK}:{port}"
    upload(endpoint, STATE / "bundle", make_bundle(STATE))
    return endpoint


def create_model(
    api: client.ApiClient, procs: Supervisor, cluster: LocalCluster, endpoint: str, strategy: str
) -> None:
    runs = "serving pods (trtrefit serve)" if strategy == "InPlace" else "refit pods"
    say(
        f"4/6 serving Deployment, S3 credentials Secret, the TRTModel ({strategy}); {runs} run by fakekubelet"
    )
    client.CoreV1Api(api).create_namespaced_secret(
        DEMO_NS,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="s3-credentials"),
            string_data={**S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint},
        ),
    )
    deployment = (
        inplace.serving_deployment(SERVER, "demo", INPLACE_REPLICAS)
        if strategy == "InPlace"
        else serving_deployment()
    )
    client.AppsV1Api(api).create_namespaced_deployment(DEMO_NS, deployment)
    procs.spawn(
        "fakekubelet",
        [
            sys.executable,
            str(REPO / "hack" / "fakekubelet.py"),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--namespace",
            DEMO_NS,
            "--log-dir",
            str(STATE / "logs" / "pods"),
        ],
    )
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, DEMO_NS, PLURAL, trtmodel(FIRST, f"{RELEASE}-refit", strategy)
    )
    until = settled_on(FIRST) if strategy == "Restart" else all_pods_on(FIRST, INPLACE_REPLICAS)
    show_progress(custom, until, timeout=240)


def all_pods_on(checkpoint: str, replicas: int) -> Callable[[dict[str, Any]], bool]:
    """Ready on `checkpoint` with every replica ready and serving it (the pods start one by one)."""
    settled = settled_on(checkpoint)

    def check(obj: dict[str, Any]) -> bool:
        pods = (obj.get("status") or {}).get("pods") or {}
        return settled(obj) and pods.get("ready") == pods.get("current") == replicas

    return check


def bump_checkpoint(api: client.ApiClient) -> dict[str, Any]:
    say("5/6 GitOps bumps the checkpoint: step-1 -> step-2")
    custom = client.CustomObjectsApi(api)
    patch = {"spec": {"checkpoint": {"uri": SECOND}}}
    custom.patch_namespaced_custom_object(GROUP, VERSION, DEMO_NS, PLURAL, "demo", patch)
    return show_progress(custom, settled_on(SECOND), timeout=180)


class Client:
    """The demo's client: asks each serving pod at its pod IP (tritonclient.http) and names the checkpoint
    whose eager-PyTorch outputs the answer equals."""

    def __init__(self, api: client.ApiClient) -> None:
        bundle = STATE / "bundle"
        self.api = api
        self.inputs = inplace.load_inputs(bundle / "inputs.safetensors")
        self.references = {
            name: inplace.eager(MODEL, bundle / f"{name}.safetensors", self.inputs)
            for name in ("step-1", "step-2")
        }

    def pods(self, title: str) -> dict[str, tuple[str, int]]:
        """Print one line per pod (IP, restarts, what it reports, its answer); uid and restarts by name."""
        print(f"\n{title}")
        print(f"  {'POD':<30} {'IP':<11} {'RESTARTS':<9} {'SERVES (its own report)':<26} ANSWER")
        seen = {}
        for pod in inplace.live_pods(self.api, DEMO_NS, SERVER):
            ip = pod.status.pod_ip
            state = inplace.serving_state(ip, "demo")
            answer = inplace.ask_pod(ip, "demo", self.inputs)
            served = Path(state.checkpoint.uri).name if state.checkpoint else "-"
            first = ", ".join(f"{v:+.3f}" for v in answer["output_0"][0][:3])
            label = inplace.which(answer, self.references) or "NO CHECKPOINT (wrong)"
            print(
                f"  {pod.metadata.name:<30} {ip:<11} {inplace.restarts(pod):<9} {served:<26} "
                f"[{first}, ...] = eager PyTorch on {label}"
            )
            seen[pod.metadata.name] = (pod.metadata.uid, inplace.restarts(pod))
        return seen

    def load(self) -> inplace.Load:
        return inplace.Load(self.api, DEMO_NS, SERVER, "demo", self.inputs, self.references).start()


def bump_in_place(api: client.ApiClient, cluster: LocalCluster) -> dict[str, Any]:
    """The bump with a client asking the pods the whole time; the pods' answers before and after."""
    asker = Client(api)
    run([str(cluster.tools.kubectl), "get", "pods", "-n", DEMO_NS, "-o", "wide"], env=cluster.env())
    before = asker.pods("each pod, asked at its pod IP before the bump:")
    load = asker.load()
    load.wait_answers(20)
    started = time.monotonic()
    final = bump_checkpoint(api)
    took = time.monotonic() - started
    load.wait_answers(20)
    load.stop()
    after = asker.pods("the same pods after the bump:")
    same = before.keys() == after.keys() and all(before[n][0] == after[n][0] for n in before)
    restarts = sum(r for _, r in after.values())
    print(
        f"\n  same pods (names and UIDs): {'yes' if same else 'NO'}; restarts: {restarts}; "
        f"Ready on step-2 {took:.1f} s after the bump"
    )
    print(
        f"  client during the bump: {load.sent} requests, {len(load.failures)} failed; answers from "
        + ", ".join(f"{name}: {n}" for name, n in sorted(load.answers.items()))
    )
    for failure in load.failures[:5]:
        print(f"    {failure}")
    return final


def report(api: client.ApiClient, cluster: LocalCluster, final: dict[str, Any], strategy: str) -> None:
    say("6/6 what a user sees")
    env, kubectl = cluster.env(), str(cluster.tools.kubectl)
    run([kubectl, "get", "trtm", "-n", DEMO_NS], env=env)
    print()
    run(
        [
            kubectl,
            "get",
            "events",
            "-n",
            DEMO_NS,
            "--field-selector",
            "involvedObject.kind=TRTModel",
            "--sort-by=.lastTimestamp",
            "-o",
            "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message",
        ],
        env=env,
    )
    status = final["status"]
    print("\nstatus.serving:", json.dumps(status.get("serving"), indent=2))
    print(
        "status.lastRefit.verification:",
        json.dumps((status.get("lastRefit") or {}).get("verification"), indent=2),
    )
    template = client.AppsV1Api(api).read_namespaced_deployment(SERVER, DEMO_NS).spec.template
    if strategy == "InPlace":
        print(f"\nDeployment {SERVER}'s pod template is untouched: {json.dumps(template.metadata.labels)}")
    else:
        engine = next(e.value for e in template.spec.containers[0].env if e.name == "TRT_ENGINE_URI")
        print(f"\nDeployment {SERVER} now serves {engine}")
        print(f"  pod template annotations: {json.dumps(template.metadata.annotations)}")
    patch = 'kubectl patch trtm -n demo demo --type merge -p \'{"spec":{"checkpoint":{"uri":"%s"}}}\''
    print(f"""
\033[1mTry next\033[0m (everything is still running):
  export KUBECONFIG={cluster.kubeconfig} PATH={os.pathsep.join(str(d) for d in cluster.tools.bin_dirs)}:$PATH
  kubectl get trtm -n demo -w
  kubectl describe trtm -n demo demo
  kubectl get pods -n demo -o wide
  # a checkpoint whose shapes do not match the engine: Failed and Stalled, serving untouched
  {patch % "s3://ckpt/demo/wrong-shape.safetensors"}
  # a checkpoint with non-finite weights: Failed and Stalled, serving untouched
  {patch % "s3://ckpt/demo/nonfinite.safetensors"}
  # finite weights whose outputs overflow: Verified=False with the numbers; InPlace: the canary rolled back
  {patch % "s3://ckpt/demo/overflow.safetensors"}
  # recover with a good one
  {patch % FIRST}
  logs: {STATE / "logs"} (operator, fakekubelet, s3, pods/) and {STATE / "cluster" / "logs"}
Tear down: make demo-down""")


def up(strategy: str) -> int:
    tools = Tools.from_cache()
    down(quiet=True)
    shutil.rmtree(STATE, ignore_errors=True)  # a fresh cluster (etcd data included) every run
    STATE.mkdir()
    procs = Supervisor(STATE, detached=True)
    cluster = start_cluster(tools)
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    install_chart_and_operator(cluster, api, procs)
    endpoint = start_s3_with_bundle(procs)
    create_model(api, procs, cluster, endpoint, strategy)
    final = bump_in_place(api, cluster) if strategy == "InPlace" else bump_checkpoint(api)
    report(api, cluster, final, strategy)
    return 0


def down(quiet: bool = False) -> int:
    """Stop what an earlier `up` started, also one that was killed half-way: by the pid and start time each
    process was recorded with (a recycled pid is left alone); needs no built tools."""
    stopped = Supervisor(STATE).stop()  # the operator, S3 and fakekubelet first: they talk to the cluster
    stopped.update(Supervisor(STATE / "cluster").stop(grace=3.0))
    if not quiet:
        print(f"demo: stopped {', '.join(stopped) or 'nothing (not running)'}")
    return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", nargs="?", choices=["up", "down"], default="up")
    parser.add_argument(
        "--strategy",
        choices=["InPlace", "Restart"],
        default="InPlace",
        help="InPlace (default): the serving pods are refitted where they run; Restart: a refit Job, then "
        "a rolling restart",
    )
    args = parser.parse_args(argv[1:])
    if args.action == "down":
        return down()
    try:
        return up(args.strategy)
    except ApiException as exc:
        sys.exit(f"demo: API error {exc.status} {exc.reason}: {exc.body}")


if __name__ == "__main__":
    sys.exit(main(sys.argv))

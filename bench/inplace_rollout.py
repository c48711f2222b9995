"""InPlace rollout benchmark: a checkpoint bump until every serving replica serves it, next to the Restart
strategy in the same run.

    python bench/inplace_rollout.py [--bumps 5] [--replicas 3] [--out bench/results]

A fresh local control plane (hack/localcluster.py), the CRD, a real S3 server (moto) holding a bundle made
by `trtrefit compile --backend exported` and --bumps + 1 checkpoints, `trtrefit operator` as a subprocess and
hack/fakekubelet.py in this process. Two TRTModels in two namespaces:

- InPlace: a Deployment of `trtrefit serve` (--replicas pods, each a real process on its own loopback
  address). A client (tritonclient.http) asks the ready pods the whole time; an answer that raises or equals
  no checkpoint's eager-PyTorch outputs is a failed request. Per bump: `bump_to_all_serving_s` = from the
  spec patch until every pod's own ServingState (GET /v2/models/demo/trtrefit, polled every 20 ms) reports
  the new checkpoint; also until the TRTModel is Ready. Pod restarts and replacements are counted from the
  API over the whole run.
- Restart: a Deployment whose pods kwok runs (it starts them at once: no image pull, no model load, so this
  is a lower bound of what Restart costs) and refit Jobs whose pods run the real `trtrefit refit` (a fresh
  process, as in a cluster). Per bump: `restart_bump_to_all_serving_s` = from the spec patch until the
  TRTModel is Ready on the new checkpoint and every live pod runs the new engine.

Medians of --bumps bumps each. Targets (DESIGN.md): bump_to_all_serving_s <= 2 s, 0 pod restarts, 0 failed
requests, >= 5x faster than Restart. Results: <out>/inplace_rollout.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO)]

import inplace  # noqa: E402
import lifeline  # noqa: E402
from controlplane import Operator, machine, namespace, summary  # noqa: E402
from demo import (  # noqa: E402
    MODEL,
    S3_CREDENTIALS,
    make_bundle,
    run,
    serving_deployment,
    settled_on,
    trtmodel,
    upload,
    wait_port,
)
from fakekubelet import FakeKubelet  # noqa: E402
from localcluster import LocalCluster, Tools, free_port, read_versions  # noqa: E402
from tests.kubehelpers import wait_for  # noqa: E402
from trtrefit.api.spec import RolloutSpec  # noqa: E402
from trtrefit.api.trtmodel import GROUP, PLURAL, VERSION  # noqa: E402

NAME, APP = "demo", "demo-server"
TRTREFIT = str(Path(sys.executable).parent / "trtrefit")


def checkpoints(out: Path, count: int) -> dict[str, Path]:
    """The demo bundle (step-1, step-2, ...) plus good checkpoints up to step-<count>, each its own seed."""
    files = make_bundle(out)
    for i in range(3, count + 1):
        path = out / "bundle" / f"step-{i}.safetensors"
        run([TRTREFIT, "checkpoint", "--model", MODEL, "--seed", str(i), "--perturb", "jitter",
             "--output", str(path)], quiet=True)  # fmt: skip
        files[f"step-{i}"] = path
    return {name: path for name, path in files.items() if name.startswith("step-")}


def uri(name: str) -> str:
    return f"s3://ckpt/demo/{name}.safetensors"


def model(api: client.ApiClient, ns: str) -> dict[str, Any]:
    found: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, NAME
    )
    return found


def bump(api: client.ApiClient, ns: str, checkpoint: str) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, NAME, {"spec": {"checkpoint": {"uri": checkpoint}}}
    )


def setup(api: client.ApiClient, ns: str, strategy: str, replicas: int, credentials: dict[str, str]) -> None:
    if strategy == "InPlace":
        deployment = inplace.serving_deployment(APP, NAME, replicas)
    else:
        deployment = serving_deployment()
        deployment["spec"]["replicas"] = replicas
    client.AppsV1Api(api).create_namespaced_deployment(ns, deployment)
    client.CoreV1Api(api).create_namespaced_secret(
        ns, client.V1Secret(metadata=client.V1ObjectMeta(name="s3-credentials"), string_data=credentials)
    )
    body = trtmodel(uri("step-1"), "default", strategy)
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    wait_for(lambda: settled_on(uri("step-1"))(model(api, ns)), 300, f"{strategy} model Ready on step-1")


def inplace_bumps(api: client.ApiClient, ns: str, names: list[str], load: inplace.Load) -> dict[str, Any]:
    """Each bump: seconds until every pod reports the checkpoint, and until the TRTModel is Ready."""
    pods = inplace.live_pods(api, ns, APP)
    replicas, restarts_before = len(pods), sum(inplace.restarts(p) for p in pods)
    all_serving: list[float] = []
    ready: list[float] = []
    refit_s: list[float] = []
    lock_s: list[float] = []
    stages: dict[str, list[float]] = {}  # each pod's own refit timings, by stage
    for name in names:
        target = uri(name)

        def every_pod(t: str = target) -> bool:
            return inplace.all_serve(inplace.pod_states(api, ns, APP, NAME), t, replicas)

        def model_ready(t: str = target) -> bool:
            return settled_on(t)(model(api, ns))

        start = time.monotonic()
        bump(api, ns, target)
        wait_for(every_pod, 120, f"every pod serving {target}", interval=0.02)
        all_serving.append(time.monotonic() - start)
        wait_for(model_ready, 120, f"Ready on {target}", interval=0.02)
        ready.append(time.monotonic() - start)
        for state in inplace.pod_states(api, ns, APP, NAME).values():
            timings = state.last_refit.timings if state and state.last_refit else {}
            refit_s.append(float(timings.get("total", 0.0)))
            lock_s.append(float(timings.get("lock", 0.0)))
            for stage, seconds in timings.items():
                stages.setdefault(stage, []).append(float(seconds))
        load.wait_answers(10)
    after = inplace.live_pods(api, ns, APP)
    return {
        "bump_to_all_serving_s": all_serving,
        "bump_to_ready_s": ready,
        "pod_refit_total_s": refit_s,
        "pod_refit_lock_s": lock_s,
        "pod_refit_stage_medians_s": {k: median(v) for k, v in stages.items()},
        "pod_restarts": sum(inplace.restarts(p) for p in after) - restarts_before,
        "pods_replaced": len({p.metadata.uid for p in pods} - {p.metadata.uid for p in after}),
    }


def restart_bumps(api: client.ApiClient, ns: str, names: list[str]) -> list[float]:
    """Each bump: seconds until the TRTModel is Ready on it and every live pod runs the new engine."""
    samples = []
    for name in names:
        target = uri(name)
        start = time.monotonic()
        bump(api, ns, target)

        def rolled(t: str = target) -> bool:
            obj = model(api, ns)
            if not settled_on(t)(obj):
                return False
            engine = obj["status"]["serving"]["engine"]["uri"]
            pods = inplace.live_pods(api, ns, APP)
            envs = [{e.name: e.value for e in p.spec.containers[0].env or []} for p in pods]
            return bool(pods) and all(
                inplace.is_ready(p) and env.get("TRT_ENGINE_URI") == engine
                for p, env in zip(pods, envs, strict=True)
            )

        wait_for(rolled, 300, f"Restart: every pod on the engine of {target}", interval=0.05)
        samples.append(time.monotonic() - start)
    return samples


def versions() -> dict[str, str]:
    pins = read_versions()
    out = {
        name: metadata.version(name)
        for name in ("trtrefit", "torch", "kopf", "kubernetes", "fastapi", "uvicorn", "tritonclient")
    }
    out.update(
        python=platform.python_version(),
        kube=pins["KUBERNETES_VERSION"],
        etcd=pins["ETCD_VERSION"],
        kwok=pins["KWOK_VERSION"],
    )
    return out


def commit() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], check=False, cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "operator", "hack", "bench"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{head}{' (with uncommitted changes)' if dirty else ''}"


def median(samples: list[float]) -> float:
    return round(statistics.median(samples), 3)


def markdown(r: dict[str, Any]) -> str:
    ip, rs = r["inplace"], r["restart"]
    m = r["machine"]
    rows = [
        ("InPlace: bump -> every pod reports the new checkpoint (`bump_to_all_serving_s`)",
         ip["bump_to_all_serving_s"], "<= 2 s"),
        ("InPlace: bump -> TRTModel Ready", ip["bump_to_ready_s"], "-"),
        ("InPlace: one pod's refit, fetch to verified (its own timings)", ip["pod_refit_total_s"], "-"),
        ("InPlace: one pod's lock held (the swap to its verified standby copy)", ip["pod_refit_lock_s"], "-"),
        ("Restart: bump -> every pod on the new engine (`restart_bump_to_all_serving_s`)",
         rs["restart_bump_to_all_serving_s"], "-"),
    ]  # fmt: skip
    t = r["targets"]
    lines = [
        "# InPlace rollout benchmark",
        "",
        f"Command: `{r['command']}`  ",
        f"Commit: {r['commit']}; {r['date']}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; local control plane "
        f"(Kubernetes {r['versions']['kube']}, kwok nodes); {r['replicas']} replicas, exported backend "
        f"({MODEL}), {r['n']} bumps per strategy  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        "",
        "| measure | median | p90 | max | n | target |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {s['median_s']} s | {s['p90_s']} s | {s['max_s']} s | {s['n']} | {tgt} |"
            for name, s, tgt in rows
        ),
        "",
        "| over the whole InPlace run | value | target |",
        "|---|---|---|",
        f"| pod restarts | {r['pod_restarts']} | 0 |",
        f"| pods replaced | {ip['pods_replaced']} | 0 |",
        f"| failed requests (of {ip['requests']}, a client asking the whole time) "
        f"| {r['failed_requests']} | 0 |",
        f"| Restart / InPlace (medians) | {r['speedup']}x | >= 5x |",
        "",
        "Targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in t.items()) + ".",
        "",
        "One pod's refit by stage (medians of its own timings, s): "
        + ", ".join(f"{k} {v}" for k, v in ip["pod_refit_stage_medians_s"].items())
        + f". Rollout: a canary, then the other pods {r['batch']} at a time (spec.rollout.maxConcurrent "
        "25%), so a bump costs about one canary refit plus the batches after it.",
        "",
        "Answers by checkpoint during the InPlace bumps (each equal to eager PyTorch on that checkpoint): "
        + ", ".join(f"{k} {v}" for k, v in sorted(ip["answers"].items()))
        + ".",
        "",
        "Restart here is a lower bound: kwok starts its serving pods at once (no image pull, no model load); "
        "the refit Job's pod is a real fresh `trtrefit refit` process (exported backend, CPU).",
    ]
    return "\n".join(lines) + "\n"


def measure(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any], list[float], inplace.Load]:
    """Both strategies on one fresh control plane: the InPlace samples, the Restart samples, the client."""
    names = [f"step-{i}" for i in range(2, args.bumps + 2)]
    # S3 in a process of its own: in this one it would share the GIL with the client and the polling.
    port = free_port()
    s3 = subprocess.Popen(  # dies with this benchmark, however it ends
        lifeline.command([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    credentials = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    files = checkpoints(tmp, args.bumps + 1)
    upload(credentials["AWS_ENDPOINT_URL"], tmp / "bundle", files)
    inputs = inplace.load_inputs(tmp / "bundle" / "inputs.safetensors")
    references = {name: inplace.eager(MODEL, path, inputs) for name, path in files.items()}
    cluster = LocalCluster(workdir=tmp / "cluster", tools=Tools.from_cache())
    cluster.start()
    operator, kubelet, load = None, None, None
    try:
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        crd = yaml.safe_load((REPO / "crds" / "trtmodel.yaml").read_text())
        client.ApiextensionsV1Api(api).create_custom_resource_definition(crd)
        time.sleep(2)  # Established
        for ns in ("inplace", "restart"):
            namespace(api, ns)
        operator = Operator(cluster, ["inplace", "restart"], tmp / "operator.log")
        kubelet = FakeKubelet(api=api, namespaces=["inplace", "restart"], log_dir=tmp)
        threading.Thread(target=kubelet.serve, daemon=True).start()

        setup(api, "inplace", "InPlace", args.replicas, credentials)
        load = inplace.Load(api, "inplace", APP, NAME, inputs, references).start()
        load.wait_answers(30)
        inp = inplace_bumps(api, "inplace", names, load)
        load.wait_answers(30)
        load.stop()

        setup(api, "restart", "Restart", args.replicas, credentials)
        return inp, restart_bumps(api, "restart", names), load
    finally:
        if load is not None:
            load.stop()
        if kubelet is not None:
            kubelet.stop()
        if operator is not None:
            operator.stop()
        cluster.stop()
        s3.terminate()
        s3.wait(30)


def results(
    args: argparse.Namespace, inp: dict[str, Any], rst: list[float], load: inplace.Load
) -> dict[str, Any]:
    speedup = round(median(rst) / median(inp["bump_to_all_serving_s"]), 1)
    result: dict[str, Any] = {
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python bench/inplace_rollout.py " + " ".join(sys.argv[1:]),
        "versions": versions(),
        "machine": machine(),
        "n": args.bumps,
        "replicas": args.replicas,
        "batch": RolloutSpec.model_validate({"maxConcurrent": "25%"}).batch_size(args.replicas),
        "bump_to_all_serving_s": median(inp["bump_to_all_serving_s"]),
        "pod_restarts": inp["pod_restarts"],
        "failed_requests": len(load.failures),
        "restart_bump_to_all_serving_s": median(rst),
        "speedup": speedup,
        "inplace": {
            **{k: summary(v) for k, v in inp.items() if isinstance(v, list)},
            "pod_restarts": inp["pod_restarts"],
            "pods_replaced": inp["pods_replaced"],
            "pod_refit_stage_medians_s": inp["pod_refit_stage_medians_s"],
            "requests": load.sent,
            "answers": dict(load.answers),
            "failures": load.failures[:20],
        },
        "restart": {"restart_bump_to_all_serving_s": summary(rst)},
        "raw": {
            **{k: v for k, v in inp.items() if isinstance(v, list)},
            "restart_bump_to_all_serving_s": rst,
        },
    }
    result["targets"] = {
        "bump_to_all_serving_s <= 2 s": result["bump_to_all_serving_s"] <= 2.0,
        "0 pod restarts": result["pod_restarts"] == 0,
        "0 failed requests": result["failed_requests"] == 0,
        ">= 5x faster than Restart": speedup >= 5.0,
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bumps", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trtrefit-inplace-bench-") as tmp:
        inp, rst, load = measure(args, Path(tmp))
    result = results(args, inp, rst, load)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inplace_rollout.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "inplace_rollout.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

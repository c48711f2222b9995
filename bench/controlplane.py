"""Control-plane benchmark: the operator's latencies and footprint on the local control plane.

    python bench/controlplane.py [--repeat 10] [--models 200] [--out bench/results]

A fresh local control plane (hack/localcluster.py), the CRD, and `trtrefit operator` as a subprocess. The
refit pods' results are written by this script playing the kubelet (a passed result read from the pod's own
arguments, as in the integration tests), so what is measured is the operator, not the worker.

Measured, each from watch events received by this process:
- checkpoint bump -> refit Job created;  Job Complete -> Deployment patched; and from the refit pod's exit:
  -> Job Complete (kube's Job controller), -> Deployment patched, -> TRTModel Ready.
- baseline in the same run: a Job created by this process directly -> its watch event (the API's own floor).
- with `--models` TRTModels held (all Ready): the operator's RSS and its CPU use while idle, next to the same
  operator holding one model.
Targets (DESIGN.md): <= 1 s, <= 1 s, <= 200 MB RSS. Results: <out>/controlplane.json and .md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "hack"), str(REPO)]

import lifeline  # noqa: E402
from demo import settled_on  # noqa: E402
from localcluster import LocalCluster, Tools, free_port, read_versions  # noqa: E402
from tests.integration.world import (  # noqa: E402  the integration suite's kubelet stand-in
    complete,
    finish_pod,
    passed,
    refit_jobs,
    serving_deployment,
    trtmodel,
)
from tests.kubehelpers import wait_for  # noqa: E402
from trtrefit.api.trtmodel import GROUP, PLURAL, VERSION  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def named(name: str, obj: Any) -> bool:
    return bool(obj.metadata.name == name)


def runs_checkpoint(checkpoint: str, job: Any) -> bool:
    return checkpoint in job.spec.template.spec.containers[0].args


def named_and_complete(name: str, job: Any) -> bool:
    return named(name, job) and _complete(job)


def generation_after(generation: int, deployment: Any) -> bool:
    return bool(deployment.metadata.generation > generation)


def first_event(
    list_fn: Callable[..., Any], namespace: str, since: str, match: Callable[[Any], bool], timeout: float = 30
) -> float:
    """monotonic time at which a watch from resourceVersion `since` delivers an object that matches."""
    stream = watch.Watch()
    for event in stream.stream(list_fn, namespace, resource_version=since, timeout_seconds=int(timeout)):
        if match(event["object"]):
            stream.stop()
            return time.monotonic()
    raise TimeoutError(f"no matching event from {list_fn.__name__} in {timeout} s")


def ready_on(api: client.ApiClient, namespace: str, name: str, checkpoint: str) -> bool:
    model = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return settled_on(checkpoint)(model)


class Operator:
    def __init__(self, cluster: LocalCluster, namespaces: list[str], log: Path) -> None:
        argv = [
            sys.executable,
            "-m",
            "trtrefit.cli",
            "operator",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--metrics-port",
            str(free_port()),
        ]
        for ns in namespaces:
            argv += ["--namespace", ns]
        env = {**os.environ, "TRTREFIT_WORKER_IMAGE": "registry.example/trtrefit-worker:bench"}
        self.log = log.open("wb")
        self.proc = subprocess.Popen(  # dies with this benchmark, however it ends
            lifeline.command(argv), stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def namespace(api: client.ApiClient, name: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(lambda: core.list_namespaced_service_account(name).items, 20, f"default SA in {name}")


def api_floor(api: client.ApiClient, ns: str, repeat: int) -> list[float]:
    """A Job created by this process -> its ADDED watch event: what any controller's latency sits on."""
    batch = client.BatchV1Api(api)
    samples = []
    for i in range(repeat):
        since = batch.list_namespaced_job(ns).metadata.resource_version
        body = {
            "metadata": {"name": f"floor-{i}"},
            "spec": {
                "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}
            },
        }
        start = time.monotonic()
        batch.create_namespaced_job(ns, body)
        seen = first_event(batch.list_namespaced_job, ns, since, functools.partial(named, f"floor-{i}"))
        samples.append(seen - start)
    return samples


def latencies(api: client.ApiClient, ns: str, repeat: int) -> dict[str, list[float]]:
    batch, apps, custom = client.BatchV1Api(api), client.AppsV1Api(api), client.CustomObjectsApi(api)
    apps.create_namespaced_deployment(ns, serving_deployment(replicas=1))
    first = "s3://ckpt/tiny/step-0.safetensors"
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, trtmodel(checkpoint=first))
    job = wait_for(lambda: refit_jobs(api, ns), 30, "first refit Job")[0]
    complete(api, job)
    wait_for(lambda: ready_on(api, ns, "tiny", first), 60, "first rollout Ready")

    names = (
        "bump_to_job_created",
        "pod_exit_to_job_complete",
        "job_complete_to_deployment_patched",
        "pod_exit_to_deployment_patched",
        "pod_exit_to_ready",
    )
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(1, repeat + 1):
        checkpoint = f"s3://ckpt/tiny/step-{i}.safetensors"
        since = batch.list_namespaced_job(ns).metadata.resource_version
        start = time.monotonic()
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "tiny", {"spec": {"checkpoint": {"uri": checkpoint}}}
        )
        created = first_event(
            batch.list_namespaced_job,
            ns,
            since,
            functools.partial(runs_checkpoint, checkpoint),
        )
        out["bump_to_job_created"].append(created - start)

        job = next(j for j in refit_jobs(api, ns) if checkpoint in j.spec.template.spec.containers[0].args)
        deployment = apps.read_namespaced_deployment("tiny-server", ns)
        generation, deployments_since = deployment.metadata.generation, deployment.metadata.resource_version
        jobs_since = batch.list_namespaced_job(ns).metadata.resource_version
        done = time.monotonic()
        complete(api, job)  # returns once the pod status is written: the worker container has exited
        completed = first_event(
            batch.list_namespaced_job,
            ns,
            jobs_since,
            functools.partial(named_and_complete, job.metadata.name),
        )
        patched = first_event(
            apps.list_namespaced_deployment,
            ns,
            deployments_since,
            functools.partial(generation_after, generation),
        )
        out["pod_exit_to_job_complete"].append(completed - done)
        out["job_complete_to_deployment_patched"].append(patched - completed)
        out["pod_exit_to_deployment_patched"].append(patched - done)
        wait_for(
            functools.partial(ready_on, api, ns, "tiny", checkpoint),
            60,
            f"Ready on {checkpoint}",
            interval=0.05,
        )
        out["pod_exit_to_ready"].append(time.monotonic() - done)
    return out


def _complete(job: Any) -> bool:
    return any(c.type == "Complete" and c.status == "True" for c in (job.status.conditions or []))


def kubelet_loop(api: client.ApiClient, ns: str, stop: threading.Event) -> None:
    """Finish every refit pod in `ns` that kwok has made Running with a passed result; never waits."""
    core = client.CoreV1Api(api)
    finished: set[str] = set()
    while not stop.is_set():
        for pod in core.list_namespaced_pod(ns, label_selector="batch.kubernetes.io/job-name").items:
            if pod.metadata.uid in finished or pod.status.phase != "Running" or not pod.status.pod_ip:
                continue
            finish_pod(api, pod, passed(pod).to_json(), 0)
            finished.add(pod.metadata.uid)
        stop.wait(0.2)


def hold_many(api: client.ApiClient, ns: str, count: int) -> float:
    """`count` TRTModels, each refitted and rolled out; seconds until all are Ready."""
    apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)
    checkpoint = "s3://ckpt/tiny/step-1.safetensors"
    start = time.monotonic()
    stop = threading.Event()
    thread = threading.Thread(target=kubelet_loop, args=(api, ns, stop), daemon=True)
    thread.start()
    for i in range(count):
        apps.create_namespaced_deployment(ns, serving_deployment(name=f"server-{i}", replicas=1))
        body = trtmodel(name=f"model-{i}", checkpoint=checkpoint)
        body["spec"]["serving"]["deploymentName"] = f"server-{i}"
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)

    def all_ready() -> bool:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        ready = [
            m
            for m in items
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in m.get("status", {}).get("conditions", [])
            )
        ]
        return len(ready) == count

    wait_for(all_ready, 900, f"{count} TRTModels Ready")
    stop.set()
    thread.join(10)
    return time.monotonic() - start


def idle_footprint(pid: int, seconds: float) -> dict[str, float]:
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    return {"rss_mb": round(rss_mb(pid), 1), "idle_cpu_percent": round(100 * cpu, 2)}


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_s": round(statistics.median(ordered), 4),
        "p90_s": round(ordered[int(0.9 * (len(ordered) - 1))], 4),
        "max_s": round(ordered[-1], 4),
        "n": len(ordered),
    }


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "python": platform.python_version(),
        "kubernetes": read_versions()["KUBERNETES_VERSION"],
    }


def markdown(result: dict[str, Any]) -> str:
    lat, floor, mem = result["latency"], result["api_floor"], result["footprint"]
    ratio = lat["bump_to_job_created"]["median_s"] / floor["median_s"]
    rows = [
        ("checkpoint bump -> refit Job created", lat["bump_to_job_created"], "<= 1 s"),
        (
            "Job done (Complete condition) -> Deployment patched",
            lat["job_complete_to_deployment_patched"],
            "<= 1 s",
        ),
        ("refit pod exited -> Job Complete (kube's Job controller)", lat["pod_exit_to_job_complete"], "-"),
        ("refit pod exited -> Deployment patched", lat["pod_exit_to_deployment_patched"], "-"),
        ("refit pod exited -> TRTModel Ready (rollout by kube)", lat["pod_exit_to_ready"], "-"),
        ("baseline: Job created -> watch event (API floor)", floor, "-"),
    ]
    lines = [
        "# Control-plane benchmark",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"{result['machine']['memory_gib']} GiB; Python {result['machine']['python']}; "
        f"Kubernetes {result['machine']['kubernetes']} (local control plane, kwok nodes); {result['date']}",
        "",
        "| latency | median | p90 | max | n | target |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {s['median_s']} s | {s['p90_s']} s | {s['max_s']} s | {s['n']} | {t} |"
            for name, s, t in rows
        ),
        "",
        f"Bump -> Job created is {ratio:.1f}x the API floor (median). The operator acts on the Job's "
        "Complete condition; between the pod's exit and that condition is kube-controller-manager's Job "
        "controller, which batches pod updates (about 1 s).",
        "",
        "| operator footprint | RSS | idle CPU | target |",
        "|---|---|---|---|",
        f"| holding 1 TRTModel | {mem['one']['rss_mb']} MB | {mem['one']['idle_cpu_percent']} % | - |",
        f"| holding {result['models']} TRTModels (all Ready) | {mem['many']['rss_mb']} MB | "
        f"{mem['many']['idle_cpu_percent']} % | <= 200 MB |",
        "",
        f"{result['models']} TRTModels created, refitted and Ready in {result['hold_many_s']} s",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trtrefit-bench-") as tmp:
        cluster = LocalCluster(workdir=Path(tmp) / "cluster", tools=Tools.from_cache())
        cluster.start()
        operator = None
        try:
            api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
            crd = yaml.safe_load((REPO / "crds" / "trtmodel.yaml").read_text())
            client.ApiextensionsV1Api(api).create_custom_resource_definition(crd)
            time.sleep(2)  # Established
            for ns in ("latency", "scale"):
                namespace(api, ns)
            operator = Operator(cluster, ["latency", "scale"], Path(tmp) / "operator.log")
            floor = api_floor(api, "latency", args.repeat)
            lat = latencies(api, "latency", args.repeat)
            one = idle_footprint(operator.proc.pid, args.idle_seconds)
            hold_s = hold_many(api, "scale", args.models)
            many = idle_footprint(operator.proc.pid, args.idle_seconds)
        finally:
            if operator is not None:
                operator.stop()
            cluster.stop()
    result = {
        "command": "python bench/controlplane.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "models": args.models,
        "api_floor": summary(floor),
        "latency": {k: summary(v) for k, v in lat.items()},
        "footprint": {"one": one, "many": many},
        "hold_many_s": round(hold_s, 1),
        "raw": {"api_floor": floor, **lat},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "controlplane.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "controlplane.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

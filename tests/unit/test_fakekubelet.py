"""The e2e kubelet's parts that need no cluster: which pods it runs, the command line and environment, the
termination message rules, serving pods' addresses, probes and status, and how it rides out API outages."""

from __future__ import annotations

import datetime as dt
import http.server
import logging
import threading
import time
from pathlib import Path

import pytest
import urllib3
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from apiretry import Backoff, Outage, StoppedError, retry, transient
from containerenv import ContainerConfigError, basic_env, expand
from fakekubelet import FakeKubelet, is_refit_pod, resolve_argv, termination_message
from localcluster import free_port
from servingpods import ContainerState, IpPool, Probe, is_serving_pod, probe_ok, readiness_probe, with_host
from tests.kubehelpers import wait_for

HACK = Path(__file__).resolve().parents[2] / "hack"


def _pod(
    command: list[str] | None, args: list[str], phase: str = "Running", owner: str = "Job"
) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name="p",
            namespace="ns",
            owner_references=[client.V1OwnerReference(api_version="v1", kind=owner, name="j", uid="u")],
        ),
        spec=client.V1PodSpec(
            node_name="gpu-h100-0",
            containers=[client.V1Container(name="refit", image="w", command=command, args=args)],
        ),
        status=client.V1PodStatus(phase=phase),
    )


def test_runs_only_unfinished_job_pods_of_the_worker() -> None:
    assert is_refit_pod(_pod(["trtrefit"], ["refit", "--engine", "x"]))
    assert is_refit_pod(_pod(None, ["refit"]))  # the worker image's entrypoint is trtrefit
    assert is_refit_pod(_pod(["/usr/local/bin/trtrefit"], ["refit"]))
    assert not is_refit_pod(_pod(["trtrefit"], ["refit"], phase="Succeeded"))
    assert not is_refit_pod(_pod(["trtrefit"], ["refit"], owner="ReplicaSet"))
    assert not is_refit_pod(_pod(["python"], ["serve.py"]))


def test_entrypoint_resolves_to_the_local_install(tmp_path: Path) -> None:
    (tmp_path / "trtrefit").touch()
    container = client.V1Container(name="c", command=["trtrefit"], args=["refit", "--engine", "file:///e.ep"])
    assert resolve_argv(container, tmp_path) == [
        str(tmp_path / "trtrefit"),
        "refit",
        "--engine",
        "file:///e.ep",
    ]


def test_termination_message_prefers_the_file_then_falls_back_to_logs_on_error() -> None:
    assert (
        termination_message('{"outcome":"passed"}', "logs", 0, "FallbackToLogsOnError")
        == '{"outcome":"passed"}'
    )
    assert termination_message("", "x" * 5000 + "boom", 1, "FallbackToLogsOnError").endswith("boom")
    assert len(termination_message("", "x" * 5000, 1, "FallbackToLogsOnError")) == 2048
    assert termination_message("", "boom", 1, "File") == ""
    assert termination_message("", "fine", 0, "FallbackToLogsOnError") == ""
    assert len(termination_message("y" * 5000, "", 0, "File")) == 4096


# -- serving pods (hack/servingpods.py) and the container environment (hack/containerenv.py) ----------------


def _serving_pod(
    command: list[str] | None, args: list[str], owner: str = "ReplicaSet", deleting: bool = False
) -> client.V1Pod:
    pod = _pod(command, args, owner=owner)
    if deleting:
        pod.metadata.deletion_timestamp = dt.datetime.now(dt.UTC)
    return pod


def test_serving_pods_are_replicaset_pods_running_trtrefit_serve() -> None:
    assert is_serving_pod(_serving_pod(["trtrefit", "serve"], ["--model-name", "m"]))
    assert is_serving_pod(_serving_pod(["/opt/venv/bin/trtrefit"], ["serve"]))
    assert is_serving_pod(_serving_pod(None, ["serve"]))  # the image's entrypoint is trtrefit
    assert not is_serving_pod(_serving_pod(None, []))  # a plain server image: kwok's
    assert not is_serving_pod(_serving_pod(["trtrefit", "serve"], [], owner="Job"))
    assert not is_serving_pod(_serving_pod(["python"], ["serve"]))
    assert not is_serving_pod(_serving_pod(["trtrefit", "serve"], [], deleting=True))
    unscheduled = _serving_pod(["trtrefit", "serve"], [])
    unscheduled.spec.node_name = None
    assert not is_serving_pod(unscheduled)


def test_kwok_leaves_serving_pods_to_the_fake_kubelet() -> None:
    """The pod-ready stage carries the same test as is_serving_pod (evaluated by kwok; proven on the
    cluster by tests/e2e/test_fakekubelet_pods.py)."""
    stages = {
        s["metadata"]["name"]: s for s in yaml.safe_load_all((HACK / "kwok" / "stages.yaml").read_text())
    }
    keys = [e["key"] for e in stages["pod-ready"]["spec"]["selector"]["matchExpressions"]]
    (serving,) = [k for k in keys if '"serve"' in k]
    assert '"ReplicaSet"' in serving and '"trtrefit"' in serving


def test_the_server_binds_the_pods_own_address() -> None:
    assert with_host(["trtrefit", "serve", "--model-name", "m"], "127.0.0.7") == [
        "trtrefit", "serve", "--model-name", "m", "--host", "127.0.0.7",
    ]  # fmt: skip
    assert with_host(["trtrefit", "serve", "--host", "0.0.0.0", "--port", "9000"], "127.0.0.8") == [
        "trtrefit", "serve", "--port", "9000", "--host", "127.0.0.8",
    ]  # fmt: skip
    assert with_host(["trtrefit", "serve", "--host=0.0.0.0"], "127.0.0.9")[-2:] == ["--host", "127.0.0.9"]


def test_readiness_probe_from_the_spec_else_the_protocols_ready_path() -> None:
    bare = client.V1Container(name="s", command=["trtrefit", "serve"], args=["--port", "9001"])
    assert readiness_probe(bare, "127.0.0.5").url == "http://127.0.0.5:9001/v2/health/ready"
    assert readiness_probe(client.V1Container(name="s", args=["serve"]), "127.0.0.5").url.endswith(
        ":8080/v2/health/ready"
    )
    named = client.V1Container(
        name="s",
        ports=[client.V1ContainerPort(name="http", container_port=8081)],
        readiness_probe=client.V1Probe(
            http_get=client.V1HTTPGetAction(path="/healthz", port="http"),
            period_seconds=2,
            failure_threshold=1,
        ),
    )
    probe = readiness_probe(named, "127.0.0.6")
    assert (probe.url, probe.period_s, probe.failure_threshold) == ("http://127.0.0.6:8081/healthz", 2.0, 1)
    named.readiness_probe.http_get.port = "grpc"
    with pytest.raises(ContainerConfigError, match="no port named 'grpc'"):
        readiness_probe(named, "127.0.0.6")


def test_probe_counts_2xx_and_3xx_as_ready_and_anything_else_not() -> None:
    statuses = {"/ok": 200, "/moved": 302, "/busy": 503}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses.get(self.path, 404))
            self.send_header("Location", "/ok")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.3", 0), Handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.3:{server.server_address[1]}"
        assert probe_ok(Probe(base + "/ok", 1))
        assert probe_ok(Probe(base + "/moved", 1))
        assert not probe_ok(Probe(base + "/busy", 1))
        server.shutdown()
    assert not probe_ok(Probe(base + "/ok", 1, timeout_s=0.2))  # nothing listens any more


def test_ip_pools_never_share_an_address_and_release_returns_it(tmp_path: Path) -> None:
    one, two = IpPool(tmp_path), IpPool(tmp_path)  # as two fake kubelets on one machine
    a, b, c = one.acquire(), two.acquire(), one.acquire()
    assert len({a, b, c}) == 3 and all(ip.startswith("127.0.0.") for ip in (a, b, c))
    assert a != "127.0.0.1"  # the control plane's
    two.release(b)
    again = one.acquire()
    assert again == b
    for ip in (a, c, again):
        one.release(ip)


def test_pod_status_reports_ip_readiness_and_restarts_like_a_kubelet() -> None:
    state = ContainerState("server", "img", "127.0.0.4", "127.0.0.1", started_at="2026-01-01T00:00:00Z")
    waiting = state.status()
    assert waiting["phase"] == "Pending" and waiting["podIP"] == "127.0.0.4"
    assert waiting["podIPs"] == [{"ip": "127.0.0.4"}]
    state.waiting = ("CreateContainerConfigError", 'configmap "m-trtrefit" not found')
    (container,) = state.status()["containerStatuses"]
    assert container["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    state.waiting, state.running_since = None, "2026-01-01T00:00:01Z"
    state.ready, state.ready_since = True, "2026-01-01T00:00:02Z"
    running = state.status()
    conditions = {c["type"]: c for c in running["conditions"]}
    assert running["phase"] == "Running" and conditions["Ready"]["status"] == "True"
    assert conditions["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:02Z"
    assert running["containerStatuses"][0]["ready"] is True
    state.restart_count, state.last_terminated = 1, {"exitCode": 1, "reason": "Error"}
    state.running_since, state.ready = None, False
    crashed = state.status()
    assert crashed["phase"] == "Running"  # a restarted container's pod stays Running
    assert crashed["containerStatuses"][0]["restartCount"] == 1
    assert crashed["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 1


def test_command_and_env_references_expand_like_kubernetes() -> None:
    env = {"MODEL": "resnet", "PORT": "8080"}
    assert expand("--model-name=$(MODEL)", env) == "--model-name=resnet"
    assert expand("$(UNKNOWN) $$(MODEL) $(PORT)", env) == "$(UNKNOWN) $(MODEL) 8080"
    container = client.V1Container(name="s", command=["trtrefit", "serve"], args=["--port", "$(PORT)"])
    assert resolve_argv(container, None, env) == ["trtrefit", "serve", "--port", "8080"]


def test_the_environment_starts_empty_of_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leaked")
    pod = _pod(["trtrefit"], ["serve"], owner="ReplicaSet")
    env = basic_env(pod, tmp_path, tmp_path / "bin")
    assert set(env) == {"PATH", "HOME", "HOSTNAME", "LANG"}
    assert env["PATH"].startswith(f"{tmp_path / 'bin'}:") and env["HOSTNAME"] == "p"


# -- riding out API outages (hack/apiretry.py) ------------------------------------------------------------


class _Clock(threading.Event):
    """A stop event whose waits return at once and are recorded: the back-off without the sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0.0))
        return self.is_set()


def _refused() -> urllib3.exceptions.MaxRetryError:
    """What the kubernetes client raises when nothing listens on the API server's port."""
    return urllib3.exceptions.MaxRetryError(None, "/api/v1/pods", ConnectionRefusedError(111, "refused"))  # type: ignore[arg-type]


def test_transient_failures_are_lost_connections_429_and_5xx_only() -> None:
    for exc in (_refused(), ConnectionResetError(), TimeoutError(), ApiException(status=503),
                ApiException(status=500), ApiException(status=429), ApiException(status=0)):  # fmt: skip
        assert transient(exc), exc
    for exc in (ApiException(status=404), ApiException(status=403), ApiException(status=409),
                ApiException(status=422), ValueError("bad"), FileNotFoundError("x")):  # fmt: skip
        assert not transient(exc), exc


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(first_s=0.2, cap_s=1.0)
    assert [backoff.delay() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.delay() == 0.2


def test_retry_rides_out_an_outage_and_logs_one_line_down_and_one_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    results: list[BaseException | str] = [_refused(), ApiException(status=503), _refused(), _refused(), "ok"]
    calls = iter(results)

    def call() -> str:
        step = next(calls)
        if isinstance(step, BaseException):
            raise step
        return step

    stop, now = _Clock(), iter(range(100))
    outage = Outage(clock=lambda: float(next(now)))
    with caplog.at_level(logging.WARNING, logger="fakekubelet"):
        assert retry(call, outage, stop, Backoff(first_s=0.1, cap_s=0.3)) == "ok"
    assert stop.waits == [0.1, 0.2, 0.3, 0.3]  # capped
    assert not outage.down and outage.outages == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "unreachable (MaxRetryError" in lines[0] and "back after 1.0 s" in lines[1]


def test_retry_raises_other_errors_at_once_and_gives_up_only_when_stopped() -> None:
    stop, outage = _Clock(), Outage()
    attempts: list[int] = []

    def missing() -> None:
        attempts.append(1)
        raise ApiException(status=404)

    with pytest.raises(ApiException):
        retry(missing, outage, stop)
    assert attempts == [1] and stop.waits == []

    def refused() -> None:
        raise _refused()

    stop.set()
    with pytest.raises(StoppedError, match="unreachable"):
        retry(refused, outage, stop)
    assert outage.down and len(stop.waits) == 1


def test_the_poll_loop_survives_an_unreachable_api_server(tmp_path: Path) -> None:
    """A real client against a port nothing listens on: the loop keeps going (it ended with a MaxRetryError
    traceback before), marks the outage, and stops when asked."""
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"
    configuration.retries = 0
    api = client.ApiClient(configuration)
    kubelet = FakeKubelet(api=api, namespaces=["ns"], log_dir=tmp_path)
    with kubelet.running():
        wait_for(lambda: kubelet.outage.outages >= 1, timeout=10, what="the outage noticed")
        time.sleep(1.0)  # several failed polls, backing off
    assert kubelet.outage.down and kubelet.outage.outages == 1
    api.close()

"""A real, local Kubernetes control plane from the binaries hack/build-tools.sh built.

etcd, kube-apiserver (RBAC on, token auth), kube-controller-manager, kube-scheduler and kwok with two
fake GPU nodes, all on 127.0.0.1. Used by the pytest fixtures, the demo and `make cluster-up`:

    python hack/localcluster.py up [--dir .cluster] [--port 6443]   # prints the kubeconfig path
    python hack/localcluster.py down [--dir .cluster]
    python hack/localcluster.py down --strays         # what earlier runs left, anywhere, whose owner is gone
    python hack/localcluster.py status [--dir .cluster]

Standard library only, so it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lifeline
from supervisor import ClusterError as ClusterError  # noqa: PLC0414 (re-exported: tests import it from here)
from supervisor import Supervisor, stop_strays

HACK_DIR = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.96.0.0/16"

# The fake GPU nodes kwok keeps alive: name -> nvidia.com/gpu.product label.
GPU_NODES = {
    "gpu-h100-0": "NVIDIA-H100-80GB-HBM3",
    "gpu-a100-0": "NVIDIA-A100-SXM4-80GB",
}
# Refit pods request their scratch volume as ephemeral-storage: the fake nodes have room for many.
NODE_CAPACITY = {
    "cpu": "64",
    "memory": "512Gi",
    "ephemeral-storage": "2Ti",
    "pods": "1000",
    "nvidia.com/gpu": "8",
}


# ---------------------------------------------------------------------------------------------- tools


def read_versions(path: Path = HACK_DIR / "versions.env") -> dict[str, str]:
    """Parse hack/versions.env (KEY=VALUE lines, # comments)."""
    versions: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key.strip()] = value.strip()
    return versions


def cache_root() -> Path:
    """Where build-tools.sh puts binaries; the same rule as the script."""
    if "TRTREFIT_CACHE" in os.environ:
        return Path(os.environ["TRTREFIT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "trtrefit"


@dataclass(frozen=True)
class Tools:
    """Absolute paths of the built binaries."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    helm: Path

    @classmethod
    def from_cache(cls, root: Path | None = None) -> Tools:
        """Locate the binaries; refuses a tool directory whose build did not finish."""
        root = root or cache_root()
        v = read_versions()
        dirs = {
            "kubernetes": root / f"kubernetes-{v['KUBERNETES_VERSION']}",
            "etcd": root / f"etcd-{v['ETCD_VERSION']}",
            "kwok": root / f"kwok-{v['KWOK_VERSION']}",
            "helm": root / f"helm-{v['HELM_VERSION']}",
        }
        missing = [str(d) for d in dirs.values() if not (d / ".complete").is_file()]
        if missing:
            raise ClusterError(
                "control-plane binaries are not built: "
                + ", ".join(missing)
                + ". Run `make tools` (or hack/build-tools.sh) first; the first build takes tens of minutes."
            )
        kube = dirs["kubernetes"]
        return cls(
            etcd=dirs["etcd"] / "etcd",
            kube_apiserver=kube / "kube-apiserver",
            kube_controller_manager=kube / "kube-controller-manager",
            kube_scheduler=kube / "kube-scheduler",
            kubectl=kube / "kubectl",
            kwok=dirs["kwok"] / "kwok",
            helm=dirs["helm"] / "helm",
        )

    @property
    def bin_dirs(self) -> list[Path]:
        return sorted({p.parent for p in (self.etcd, self.kubectl, self.kwok, self.helm)})


# ---------------------------------------------------------------------------------------------- ports


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            raise ClusterError(
                f"port {port} on {LOOPBACK} ({what}) is already in use: stop what holds it "
                f"(another local cluster? `make cluster-down`) or choose another port with --port"
            ) from exc


# ---------------------------------------------------------------------------------------------- pki


def _openssl(*args: str) -> None:
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    except FileNotFoundError as exc:
        raise ClusterError("openssl is not installed: apt-get install openssl") from exc
    except subprocess.CalledProcessError as exc:
        raise ClusterError(f"openssl {args[0]} failed: {exc.stderr.decode().strip()}") from exc


def make_pki(pki: Path) -> None:
    """CA, the API server's serving certificate, the service-account key pair. Kept across restarts."""
    if (pki / ".complete").is_file():
        return
    pki.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = pki / "ca.key", pki / "ca.crt"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        "/CN=trtrefit-local-ca",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
    )
    sans = ",".join(
        [
            f"IP:{LOOPBACK}",
            "IP:10.96.0.1",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    csr = pki / "apiserver.csr"
    _openssl(
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=kube-apiserver",
        "-addext",
        f"subjectAltName={sans}",
        "-keyout",
        str(pki / "apiserver.key"),
        "-out",
        str(csr),
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "3650",
        "-copy_extensions",
        "copyall",
        "-out",
        str(pki / "apiserver.crt"),
    )
    _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    (pki / "admin.token").write_text(secrets.token_hex(24))
    (pki / ".complete").touch()


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str = "admin") -> None:
    """A kubeconfig for `user` with a bearer token (JSON is valid YAML)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "trtrefit-local", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "trtrefit-local", "context": {"cluster": "trtrefit-local", "user": user}}],
        "current-context": "trtrefit-local",
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


# ---------------------------------------------------------------------------------------------- cluster


@dataclass
class LocalCluster:
    """One control plane rooted at `workdir` (certs, etcd data, logs, pids, kubeconfig)."""

    workdir: Path
    tools: Tools
    apiserver_port: int = 0  # 0: pick a free one
    ports: dict[str, int] = field(default_factory=dict)
    detached: bool = False  # True: the components outlive this process (`up`, the demo); `down` stops them
    processes: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.processes = Supervisor(self.workdir, detached=self.detached)

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def token(self) -> str:
        return (self.pki / "admin.token").read_text().strip()

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.ports['apiserver']}"

    def env(self) -> dict[str, str]:
        """Environment for subprocesses: KUBECONFIG and the built tools first on PATH."""
        path = os.pathsep.join([*(str(d) for d in self.tools.bin_dirs), os.environ.get("PATH", "")])
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start every component and wait until the API is ready and both GPU nodes are Ready."""
        if self.running_pids():
            raise ClusterError(f"a cluster from {self.workdir} is already running: `make cluster-down` first")
        self.workdir.mkdir(parents=True, exist_ok=True)
        make_pki(self.pki)
        if self.apiserver_port:
            ensure_port_free(self.apiserver_port, "kube-apiserver")
        self.ports = {
            "apiserver": self.apiserver_port or free_port(),
            "etcd": free_port(),
            "etcd_peer": free_port(),
            "controller_manager": free_port(),
            "scheduler": free_port(),
        }
        write_kubeconfig(self.kubeconfig, self.server, self.ca_file, self.token)
        (self.workdir / "tokens.csv").write_text(f"{self.token},admin,admin,system:masters\n")
        deadline = time.monotonic() + timeout
        try:
            self.processes.spawn("etcd", self._etcd_args())
            self.processes.spawn("kube-apiserver", self._apiserver_args())
            self._wait_ready(deadline)
            for name, args in self._controller_args().items():
                self.processes.spawn(name, args)
            self._create_gpu_nodes()
            self._wait_nodes_ready(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 3.0) -> None:
        """Stop every component, newest first; nothing is left running. A short grace: kube-apiserver and etcd
        take 7-10 s to finish a SIGTERM with clients attached, and a SIGKILL loses no etcd data (it is in the
        page cache even with --unsafe-no-fsync)."""
        self.processes.stop(grace)

    def running_pids(self) -> dict[str, int]:
        """Components that are still alive."""
        return self.processes.running()

    # -- one component: fault injection keeping data, ports, flags and certificates ------------------

    def stop_component(self, name: str, grace: float = 3.0) -> None:
        """Stop one component (SIGTERM, SIGKILL after `grace` s) and return once its process is gone and its
        ports are closed. Its data (etcd's data dir, the certificates) stays for start_component."""
        self._component_args(name)  # refuses an unknown name before anything is stopped
        self.processes.stop_one(name, grace)
        deadline = time.monotonic() + 10.0
        while any(_port_open(p) for p in self._component_ports(name)):
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{name} stopped but a port of it is still open: {self._component_ports(name)}"
                )
            time.sleep(0.05)

    def start_component(self, name: str, timeout: float = 60.0) -> None:
        """Start one stopped component again with the same flags, ports, data and certificates (clients
        reconnect unchanged); return once it serves: kube-apiserver /readyz ok, etcd /health true, the
        others listening (kwok: alive)."""
        args = self._component_args(name)
        if name in self.running_pids():
            raise ClusterError(f"{name} is already running in {self.workdir}: stop_component it first")
        self.processes.spawn(name, args)
        deadline = time.monotonic() + timeout
        if name == "kube-apiserver":
            self._wait_ready(deadline)
        elif name == "etcd":
            self._wait_etcd_healthy(deadline)
        else:
            while not all(_port_open(p) for p in self._component_ports(name)):
                self.processes.check_alive()
                if time.monotonic() > deadline:
                    raise ClusterError(f"{name} not listening in time; see {self.processes.log_file(name)}")
                time.sleep(0.1)
            self.processes.check_alive()

    def _component_args(self, name: str) -> list[str]:
        if name == "etcd":
            return self._etcd_args()
        if name == "kube-apiserver":
            return self._apiserver_args()
        controllers = self._controller_args()
        if name not in controllers:
            known = ", ".join(["etcd", "kube-apiserver", *controllers])
            raise ClusterError(f"unknown component {name!r}: one of {known}")
        return controllers[name]

    def _component_ports(self, name: str) -> list[int]:
        keys = {
            "etcd": ["etcd", "etcd_peer"],
            "kube-apiserver": ["apiserver"],
            "kube-controller-manager": ["controller_manager"],
            "kube-scheduler": ["scheduler"],
        }.get(name, [])
        return [self.ports[k] for k in keys]

    def _wait_etcd_healthy(self, deadline: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            self.processes.check_alive()
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{self.ports['etcd']}/health", timeout=2) as r:
                    health = json.loads(r.read())
                if health.get("health") == "true":
                    return
                last = json.dumps(health)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.1)
        raise ClusterError(f"etcd not healthy in time ({last}); see {self.processes.log_file('etcd')}")

    # -- helpers -----------------------------------------------------------------------------------

    def _etcd_args(self) -> list[str]:
        client = f"http://{LOOPBACK}:{self.ports['etcd']}"
        peer = f"http://{LOOPBACK}:{self.ports['etcd_peer']}"
        return [
            str(self.tools.etcd),
            "--name=local",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=local={peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        pki = self.pki
        return [
            str(self.tools.kube_apiserver),
            f"--etcd-servers=http://{LOOPBACK}:{self.ports['etcd']}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={self.ports['apiserver']}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # A loopback address may not be published as the `kubernetes` Service's endpoint.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]

    def _controller_args(self) -> dict[str, list[str]]:
        kc = str(self.kubeconfig)
        delegated = [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            f"--bind-address={LOOPBACK}",
            "--leader-elect=false",
            "--profiling=false",
        ]
        return {
            "kube-controller-manager": [
                str(self.tools.kube_controller_manager),
                *delegated,
                f"--secure-port={self.ports['controller_manager']}",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--cluster-name=trtrefit-local",
            ],
            "kube-scheduler": [
                str(self.tools.kube_scheduler),
                *delegated,
                f"--secure-port={self.ports['scheduler']}",
            ],
            "kwok": [
                str(self.tools.kwok),
                f"--kubeconfig={kc}",
                f"--config={HACK_DIR / 'kwok' / 'stages.yaml'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
                f"--node-ip={LOOPBACK}",
                "--cidr=10.244.0.0/16",
                "--node-lease-duration-seconds=40",
            ],
        }

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One authenticated JSON request to the API server."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            raw = resp.read()
            is_json = resp.headers.get_content_type() == "application/json"
        result: dict[str, Any] = (
            json.loads(raw) if is_json and raw else {"text": raw.decode(errors="replace")}
        )
        return result

    def _wait_ready(self, deadline: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            self.processes.check_alive()
            try:
                self.request("GET", "/readyz")
                return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.25)
        raise ClusterError(f"kube-apiserver not ready in time ({last}); see {self.workdir / 'logs'}")

    def _create_gpu_nodes(self) -> None:
        for name, product in GPU_NODES.items():
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                        "nvidia.com/gpu.present": "true",
                        "nvidia.com/gpu.product": product,
                    },
                },
                "status": {"capacity": NODE_CAPACITY, "allocatable": NODE_CAPACITY},
            }
            try:
                self.request("POST", "/api/v1/nodes", node)
            except urllib.error.HTTPError as exc:
                if exc.code != 409:  # already there after a restart: fine
                    raise ClusterError(f"creating node {name} failed: {exc.read().decode()}") from exc

    def _wait_nodes_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self.processes.check_alive()
            nodes = self.request("GET", "/api/v1/nodes")["items"]
            ready = {
                n["metadata"]["name"]
                for n in nodes
                if any(
                    c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", [])
                )
            }
            sa = self._default_service_account_exists()
            if set(GPU_NODES) <= ready and sa:
                return
            time.sleep(0.25)
        raise ClusterError(f"fake GPU nodes not Ready in time; see {self.workdir / 'logs'} (kwok.log)")

    def _default_service_account_exists(self) -> bool:
        try:
            self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            return True
        except urllib.error.HTTPError:
            return False


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _alive(pid: int) -> bool:  # kept for tests/integration/test_cluster_smoke.py
    return lifeline.alive(pid)


@contextlib.contextmanager
def running_cluster(workdir: Path, apiserver_port: int = 0) -> Iterator[LocalCluster]:
    """Start a cluster for the duration of a with-block; always stops it."""
    cluster = LocalCluster(workdir=workdir, tools=Tools.from_cache(), apiserver_port=apiserver_port)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument(
        "--dir", type=Path, default=Path(".cluster"), help="state directory (default .cluster)"
    )
    parser.add_argument(
        "--port", type=int, default=6443, help="kube-apiserver port on 127.0.0.1 (default 6443)"
    )
    parser.add_argument(
        "--strays",
        action="store_true",
        help="down: stop what any earlier run left (any registered dir) whose owner is gone",
    )
    args = parser.parse_args(argv)
    workdir = args.dir.resolve()
    # down and status need no binaries: they go by the records in the state directory (pid + start time),
    # so `make clean` works on a machine whose tools were never built or were rebuilt since.
    supervisor = Supervisor(workdir)
    if args.action == "down" and args.strays:
        strays = stop_strays()
        for where, names in strays.items():
            print(f"stopped strays in {where}: {', '.join(names)}", file=sys.stderr)
        print(f"stopped {sum(len(n) for n in strays.values())} stray processes", file=sys.stderr)
        return 0
    if args.action == "down":
        stopped = supervisor.stop()
        print(f"stopped {len(stopped)} processes ({', '.join(stopped) or 'none running'})", file=sys.stderr)
        return 0
    if args.action == "status":
        running = supervisor.running()
        print(json.dumps(running, indent=2))
        return 0 if running else 3
    try:
        tools = Tools.from_cache()
        # Detached: the control plane outlives this command until `down` (a test fixture's dies with it).
        cluster = LocalCluster(workdir=workdir, tools=tools, apiserver_port=args.port, detached=True)
        started = time.monotonic()
        cluster.start()
    except ClusterError as exc:
        print(f"localcluster: {exc}", file=sys.stderr)
        return 1
    print(f"cluster up in {time.monotonic() - started:.1f} s: {cluster.server}", file=sys.stderr)
    print(f"export KUBECONFIG={cluster.kubeconfig}", file=sys.stderr)
    print(f"export PATH={os.pathsep.join(str(d) for d in tools.bin_dirs)}:$PATH", file=sys.stderr)
    print(cluster.kubeconfig)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The e2e kubelet's pure parts: which pods it runs, the command line, the termination message rules."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client

from fakekubelet import is_refit_pod, resolve_argv, termination_message


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

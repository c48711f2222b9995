"""The life of a `trtrefit serve` process: live but not ready until its first checkpoint is verified, a
start-up that fails verification exits non-zero with one line, and SIGTERM turns it not ready at once,
keeps answering while it drains, and exits 0."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.serving.conftest import NAME, SHAPE, Bundle, HeldFiles, ServerProcess, start_server
from trtrefit.api.serving import DESIRED_ENV, ServingState
from trtrefit.worker.storage import hash_file

INFER = json.dumps(
    {
        "inputs": [
            {"name": "input_0", "shape": list(SHAPE), "datatype": "FP32", "data": [0.5] * (4 * 3 * 32 * 32)}
        ]
    }
).encode()


def test_not_ready_until_the_first_checkpoint_is_verified(
    bundle: Bundle, held_files: HeldFiles, tmp_path: Path
) -> None:
    """The desired checkpoint comes from the environment (as the operator's ConfigMap gives it), its
    download held back: the server is live, not ready, serves nothing, and has its refit endpoint off."""
    held = held_files.add("a.safetensors", bundle.checkpoints["a"].read_bytes(), held=True)
    desired = bundle.request(held, key="aaaa0000").wire()
    server = start_server(tmp_path, None, None, env={DESIRED_ENV: desired})
    try:
        server.wait_for("/v2/health/live", 200)
        assert held_files.requested.wait(60)
        assert server.status("/v2/health/ready") == 503
        assert server.status(f"/v2/models/{NAME}/ready") == 503
        answer = server.call("POST", f"/v2/models/{NAME}/infer", INFER)
        assert answer.status == 503 and "no verified checkpoint" in answer.json()["error"]
        state = ServingState.model_validate_json(server.call("GET", f"/v2/models/{NAME}/trtrefit").body)
        assert not state.ready and state.checkpoint is None and state.refitting == "aaaa0000"
        refused = server.refit(bundle.request("b"), token="anything")
        assert refused.status == 401 and "refit endpoint is off" in refused.json()["error"]

        held_files.release()
        server.wait_for("/v2/health/ready", 200)
        state = ServingState.model_validate_json(server.call("GET", f"/v2/models/{NAME}/trtrefit").body)
        assert state.serves("aaaa0000")
        assert (
            state.checkpoint is not None and state.checkpoint.sha256 == hash_file(bundle.checkpoints["a"])[0]
        )
        assert server.call("POST", f"/v2/models/{NAME}/infer", INFER).status == 200
    finally:
        held_files.release()
        assert server.stop() == 0, server.output()


def test_start_up_that_fails_verification_exits_non_zero_with_one_line(
    bundle: Bundle, tmp_path: Path
) -> None:
    server = start_server(tmp_path, bundle.request("zero-head"))
    code = server.process.wait(timeout=120)
    output = server.output()
    assert code == 1, output
    failures = [line for line in output.splitlines() if "start-up failed" in line]
    assert len(failures) == 1 and "verification_failed" in failures[0] and "constant" in failures[0], output
    assert "Traceback" not in output


def test_no_request_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trtrefit.cli", "serve", "--model-name", NAME],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"trtrefit serve: no refit request to serve: pass --request JSON|@FILE or set ${DESIRED_ENV}"
    )


def _post(server: ServerProcess) -> int:
    """Status of one inference on a fresh connection; 0 when nothing listens any more."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("POST", f"/v2/models/{NAME}/infer", INFER)
        return connection.getresponse().status
    except ConnectionRefusedError:
        return 0
    finally:
        connection.close()


def test_sigterm_not_ready_at_once_drains_then_exits_zero(
    bundle: Bundle, held_files: HeldFiles, tmp_path: Path
) -> None:
    """A refit is in flight (its download held back) when SIGTERM arrives: ready turns 503 at once,
    inference is answered through the drain period, then the listener closes while the refit still runs;
    the refit's caller gets its answer, and only then does the process exit 0."""
    server = start_server(tmp_path, bundle.request("a"), "t", "--drain-seconds", "1.5")
    server.wait_for("/v2/health/ready", 200)
    slow = held_files.add("b.safetensors", bundle.checkpoints["b"].read_bytes(), held=True)
    refit: list[int] = []
    in_flight = threading.Thread(target=lambda: refit.append(server.refit(bundle.request(slow), "t").status))
    in_flight.start()
    assert held_files.requested.wait(60)

    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert server.status("/v2/health/ready") == 503, "not ready at once"
    during = []
    while time.monotonic() < signalled + 1.0:
        during.append(_post(server))
    assert during and all(status == 200 for status in during), sorted(set(during))
    time.sleep(1.0)  # past the drain period: no new connections, the in-flight refit holds the exit
    assert _post(server) == 0 and server.process.poll() is None

    held_files.release()
    in_flight.join(timeout=60)
    assert refit == [200]
    assert server.process.wait(timeout=60) == 0, server.output()
    assert "SIGTERM: not ready; draining" in server.output()


def test_unreadable_files_are_named(bundle: Bundle, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    base = [sys.executable, "-m", "trtrefit.cli", "serve", "--model-name", NAME]
    for args in (
        ["--request", f"@{missing}"],
        ["--request", bundle.request("a").wire(), "--token-file", str(missing)],
    ):
        result = subprocess.run(base + args, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 2, result.stderr
        assert str(missing) in result.stderr and "cannot read it" in result.stderr


def test_a_refit_sms_count_below_one_is_refused(bundle: Bundle) -> None:
    base = [sys.executable, "-m", "trtrefit.cli", "serve", "--model-name", NAME]
    args = ["--request", bundle.request("a").wire(), "--refit-sms", "0"]
    result = subprocess.run(base + args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert "--refit-sms 0: give a number of SMs, 1 or more" in result.stderr

"""--log-format: the formatters on real records, and real `trtrefit operator` / `trtrefit serve` processes in
JSON mode whose every stderr line must parse (the worker's: tests/worker/test_progress.py)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from trtrefit.logs import JsonLineFormatter, TextLineFormatter, default_format

OPERATOR = Path(__file__).parents[2] / "operator"
KEYS = ("time", "level", "logger", "message")


def _record(message: str, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("trtrefit.worker", level, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_a_json_line_has_the_fixed_keys_first_then_the_extras() -> None:
    record = _record("fetched", uri="s3://b/k", bytes=42, stage="fetch", color_message="\x1b[1mfetched")
    line = JsonLineFormatter().format(record)
    parsed = json.loads(line)
    assert list(parsed)[:4] == list(KEYS)
    assert parsed["time"].endswith("Z") and parsed["time"][:2] == "20"
    assert (parsed["level"], parsed["logger"], parsed["message"]) == ("INFO", "trtrefit.worker", "fetched")
    assert (parsed["uri"], parsed["bytes"], parsed["stage"]) == ("s3://b/k", 42, "fetch")
    assert "color_message" not in parsed and "\n" not in line


def test_kopf_object_references_become_object_and_plumbing_is_dropped() -> None:
    reference = {"kind": "TRTModel", "namespace": "vision", "name": "resnet50"}
    record = _record("refit Job created", k8s_ref=reference, k8s_skip=False, settings=object())
    parsed = json.loads(JsonLineFormatter().format(record))
    assert parsed["object"] == reference
    assert not {"k8s_ref", "k8s_skip", "settings"} & parsed.keys()


def test_an_exception_is_one_json_line_with_its_traceback() -> None:
    try:
        raise ValueError("bad weights")
    except ValueError:
        record = _record("refit failed", logging.ERROR, exc_info=sys.exc_info())
    line = JsonLineFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: bad weights" in json.loads(line)["exc_info"]


def test_text_lines_keep_the_stage_prefix() -> None:
    assert TextLineFormatter().format(_record("sha256 ok", stage="fetch")) == "[fetch] sha256 ok"
    assert TextLineFormatter().format(_record("plain")) == "plain"


def test_the_default_format_comes_from_the_environment_when_valid() -> None:
    assert default_format({"TRTREFIT_LOG_FORMAT": "JSON"}) == "json"
    assert default_format({"TRTREFIT_LOG_FORMAT": "yaml"}) == "text"
    assert default_format({}) == "text"


def _json_lines(stderr: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stderr.splitlines()]  # every line, or this raises
    assert lines, "no output at all"
    assert all(tuple(line)[:4] == KEYS for line in lines), stderr
    return lines


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(OPERATOR), **extra}


def test_the_operator_writes_only_json_through_kopf(tmp_path: Path) -> None:
    # A cluster that refuses connections: kopf logs its start and its retries, all of it JSON.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "trtrefit.cli", "operator", "--log-format", "json",
         "--kubeconfig", str(kubeconfig), "--metrics-port", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    watchdog = threading.Timer(120, process.kill)  # a hung start fails the test instead of hanging it
    watchdog.start()
    seen: list[str] = []
    assert process.stderr is not None
    try:
        for line in process.stderr:  # until kopf has logged a failed request to the refusing cluster
            seen.append(line)
            if "127.0.0.1:1" in line and "ERROR" in line:
                break
        process.send_signal(signal.SIGTERM)
        stderr = "".join(seen) + process.communicate(timeout=60)[1]
    finally:
        watchdog.cancel()
        process.kill()
    lines = _json_lines(stderr)
    loggers = {line["logger"].split(".")[0] for line in lines}
    assert {"trtrefit", "kopf"} <= loggers, stderr
    assert any("127.0.0.1:1" in line["message"] and line["level"] == "ERROR" for line in lines)


def test_serve_writes_only_json_also_when_start_up_fails(tmp_path: Path) -> None:
    missing = tmp_path / "missing.ep"
    request = {
        "engine": {"uri": missing.as_uri()},
        "checkpoint": {"uri": (tmp_path / "ckpt.safetensors").as_uri()},
        "verify": {"generate": [{"shape": [1, 4]}]},
        "publish": {"uri": (tmp_path / "out").as_uri()},
    }
    done = subprocess.run(
        [sys.executable, "-m", "trtrefit.cli", "serve", "--log-format", "json", "--model-name", "m",
         "--port", "0", "--host", "127.0.0.1", "--drain-seconds", "0", "--request", json.dumps(request)],
        capture_output=True, text=True, timeout=180, env=_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = _json_lines(done.stderr)
    serve = [line for line in lines if line.get("stage") == "serve"]
    assert serve[0]["message"].startswith(f"loading {missing.as_uri()}")
    assert any(line["message"].startswith("start-up failed") for line in serve), done.stderr
    assert any(line["logger"].startswith("uvicorn") for line in lines), done.stderr


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_serve_configuration_error_is_one_line(log_format: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trtrefit.cli", "serve", "--model-name", "m", "--log-format", log_format],
        capture_output=True, text=True, timeout=60, env=_env(TRTREFIT_DESIRED_REFIT=""), check=False,
    )  # fmt: skip
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    message = json.loads(line)["message"] if log_format == "json" else line
    assert message.startswith("trtrefit serve: no refit request to serve")

"""Does a refit in a process of its own, the GPU shared under MPS, leave serving latency alone?

The design docs/serving.md proposes for #11's last target (p99 while refitting <= idle p99 + lock): each
copy in a process of its own, so the refit's Python never holds the serving interpreter's lock, and the
two processes sharing the GPU under MPS instead of time-slicing it. This measures that design's cost to
requests before it is built. Per model, per GPU-sharing setup, in fresh processes:

  serve     a `ServingModel` (serving/service.py) started on checkpoint A; --clients threads of
            requests for --load-s seconds, each response checked to be exactly A's outputs.
  refitter  a second process with a `ServingModel` of its own on the same program, refitting B, A, B, ...
            back to back (fetch, check, stage, reference, apply, verify, swap: the whole refit) while
            the serving process is measured. It stands for the standby process of the design: it does
            all of a refit's work; the design's route switch (the lock) is not part of it.

Phases in the serving process: idle (the refitter loaded, waiting), two_process (the refitter
refitting), then with --pieces one phase per piece (the refitter repeating ONE piece of a refit, as
bench/hot_refit_stages.py defines them: check, stage, reference, standby), idle again, then in_process
(the serving model refitting itself, as `trtrefit serve` does today) under the same setup, for a
comparison from the same run. The pieces say which of a refit's GPU work still reaches requests when
neither the interpreter lock nor (under mps_split_N) the SMs are shared.

Setups: time_slice (no MPS: two CUDA contexts, which the GPU time-slices), mps (an MPS control daemon
started for the run, both processes its clients), mps_refit_N (the refitter limited to N% of the SMs
with CUDA_MPS_ACTIVE_THREAD_PERCENTAGE), mps_split_N (the refitter N%, the serving process 100-N%).
The daemon is private to the run (its own pipe and log folders under the workdir) and is told to quit
after each setup; the GPU's compute mode and other settings are left as they are.

On the lent H200 (../shared/gpu/README.md):
    source .gpu/b/stage2.sh && PYTHONPATH=operator:bench:$PYTHONPATH python3 bench/two_process_mps.py \
        --out $OUT --workdir /tmp/mps --commit <the commit the tree is at>
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hot_refit import (
    IMAGE,
    MODELS,
    Load,
    host,
    log,
    machine,
    median,
    refitting_phase,
    request_for,
    stage_medians,
    versions,
)
from hot_refit_stages import REFIT_PIECES

SETUPS = ("time_slice", "mps", "mps_refit_25", "mps_split_25")
MPS_CONTROL = "nvidia-cuda-mps-control"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", choices=("drive", "prepare", "serve", "refitter"), default="drive")
    parser.add_argument("--models", default="resnet50,vit_b_16")
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--think-ms", type=float, default=2.0)
    parser.add_argument("--load-s", type=float, default=5.0)
    parser.add_argument("--pieces", default="", help="e.g. check,stage,reference,standby (none by default)")
    parser.add_argument("--backend", default="tensorrt")
    parser.add_argument("--commit", default=os.environ.get("TRTREFIT_COMMIT", "unknown"))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--result", type=Path, help="(serve) where the serving process writes its phases")
    args = parser.parse_args(argv)
    for setup in args.setups.split(","):
        if setup not in ("time_slice", "mps") and sharing(setup) == (None, None):
            parser.error(f"--setups: unknown {setup!r}")
    for piece in pieces_of(args):
        if piece not in REFIT_PIECES:
            parser.error(f"--pieces: unknown {piece!r} (known: {', '.join(REFIT_PIECES)})")
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="two-process-"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.role == "prepare":
        return prepare(args)
    if args.role == "serve":
        return serve(args)
    if args.role == "refitter":
        return refitter(args)
    return drive(args, argv)


def sharing(setup: str) -> tuple[int | None, int | None]:
    """(serving %, refitter %) of the SMs an MPS setup gives; (None, None) for an unknown name."""
    if setup.startswith("mps_refit_") and setup.removeprefix("mps_refit_").isdigit():
        return 100, int(setup.removeprefix("mps_refit_"))
    if setup.startswith("mps_split_") and setup.removeprefix("mps_split_").isdigit():
        share = int(setup.removeprefix("mps_split_"))
        return 100 - share, share
    return None, None


# -- the driver: no CUDA of its own, so an MPS daemon can come and go between setups ------------------


def drive(args: argparse.Namespace, argv: list[str] | None) -> int:
    started = time.time()
    models: dict[str, Any] = {}
    result = {
        "benchmark": "two_process_mps",
        "commit": args.commit,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python3 bench/two_process_mps.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "versions": {},  # from the first prepare child: this process keeps CUDA uninitialised
        "machine": machine(),
        "n": {"clients": args.clients, "load_s": args.load_s},
        "settings": {
            "batch": args.batch,
            "think_ms": args.think_ms,
            "setups": args.setups.split(","),
            "pieces": pieces_of(args),
        },
        "mps_control": shutil.which(MPS_CONTROL),
        "compute_mode": query_gpu("compute_mode"),
        "models": models,
    }
    for name in args.models.split(","):
        models[name] = {}
        child(args, "prepare", name)
        result["versions"] = json.loads((args.workdir / "versions.json").read_text())
        for setup in args.setups.split(","):
            log(f"{name}: {setup}")
            try:
                models[name][setup] = run_setup(args, name, setup)
            except Exception as exc:  # a setup that cannot run is a result too
                models[name][setup] = {"error": f"{type(exc).__name__}: {exc}"[:800]}
            log(f"{name}: {setup}: {json.dumps(summary(models[name][setup]))}")
            write(result, args.out, started)
    write(result, args.out, started)
    print(render(result))
    return 0


def run_setup(args: argparse.Namespace, name: str, setup: str) -> dict[str, Any]:
    out = args.workdir / f"{name}-{setup}.json"
    if setup == "time_slice":
        child(args, "serve", name, setup=setup, result=out)
        return dict(json.loads(out.read_text()))
    with mps_daemon(args.workdir / f"mps-{name}-{setup}") as (env, logs):
        child(args, "serve", name, setup=setup, result=out, env=env)
        found = dict(json.loads(out.read_text()))
    return found | {"mps_control_log": logs()}


def child(
    args: argparse.Namespace,
    role: str,
    name: str,
    *,
    setup: str = "",
    result: Path | None = None,
    env: dict[str, str] | None = None,
) -> None:
    command = [sys.executable, __file__, "--role", role, "--models", name, "--setups", setup or "time_slice"]
    command += ["--batch", str(args.batch), "--clients", str(args.clients), "--think-ms", str(args.think_ms)]
    command += ["--load-s", str(args.load_s), "--workdir", str(args.workdir), "--backend", args.backend]
    command += ["--pieces", args.pieces]
    if result is not None:
        command += ["--result", str(result)]
    subprocess.run(command, check=True, env=env, timeout=900)


@contextlib.contextmanager
def mps_daemon(folder: Path) -> Iterator[tuple[dict[str, str], Any]]:
    """An MPS control daemon of this run's own (its pipe and log folders under `folder`): the environment
    its clients need, and a reader of its control log. Told to quit on the way out, whatever happened."""
    if shutil.which(MPS_CONTROL) is None:
        raise RuntimeError(f"{MPS_CONTROL} is not on this machine's PATH")
    pipes, logs = folder / "pipe", folder / "log"
    pipes.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"CUDA_MPS_PIPE_DIRECTORY": str(pipes), "CUDA_MPS_LOG_DIRECTORY": str(logs)}
    subprocess.run([MPS_CONTROL, "-d"], env=env, check=True, timeout=30)

    def control_log() -> list[str]:
        path = logs / "control.log"
        return path.read_text(errors="replace").splitlines()[-12:] if path.exists() else []

    try:
        yield env, control_log
    finally:
        subprocess.run([MPS_CONTROL], input=b"quit\n", env=env, timeout=30, check=False)
        time.sleep(1.0)  # the daemon and its server exit asynchronously


def query_gpu(field: str) -> str | None:
    try:
        found = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip() or None


def write(result: dict[str, Any], out: Path, started: float) -> None:
    result["wall_s"] = round(time.time() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "two_process_mps.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / "two_process_mps.md").write_text(render(result))


# -- the children -----------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> int:
    """The bundle and the two checkpoints (as hot_refit.py writes them), once per model."""
    from trtrefit.worker.compile import CompileRequest, compile_bundle
    from trtrefit.worker.samples import write_checkpoint

    name = args.models
    root = args.workdir / name
    (args.workdir / "versions.json").write_text(json.dumps(versions()))
    if not (root / "B.safetensors").exists():
        size = IMAGE.get(name, 224)
        shape = (args.batch, 3, size, size)
        compile_bundle(CompileRequest(output=root, shapes=[shape], backend=args.backend, model=MODELS[name]))
        write_checkpoint(MODELS[name], 11, "jitter", root / "A.safetensors")
        write_checkpoint(MODELS[name], 12, "jitter", root / "B.safetensors")
    return 0


def started_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from trtrefit.api.result import Outcome
    from trtrefit.serving.service import ServingModel

    name = args.models
    root = args.workdir / name
    requests = {key: request_for(name, root, f"{key}.safetensors", args) for key in "AB"}
    model = ServingModel(name, Path(tempfile.mkdtemp(prefix="serve-", dir=root)))
    first = model.start(requests["A"])
    if first.outcome != Outcome.PASSED:
        raise SystemExit(f"{name}: start-up refit did not pass: {first.message}")
    return model, requests


def serve(args: argparse.Namespace) -> int:
    from trtrefit.api.result import Outcome
    from trtrefit.worker.inputs import load_inputs

    name, setup = args.models, args.setups
    serving_share, refit_share = sharing(setup)
    if serving_share is not None and serving_share < 100:
        os.environ["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(serving_share)  # before CUDA starts
    env = os.environ | ({"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(refit_share)} if refit_share else {})
    command = [sys.executable, __file__, "--role", "refitter", "--models", name, "--setups", setup]
    command += ["--batch", str(args.batch), "--workdir", str(args.workdir), "--backend", args.backend]
    command += ["--pieces", args.pieces]
    other = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert other.stdin is not None and other.stdout is not None
    started = time.perf_counter()
    model, requests = started_model(args)
    if other.stdout.readline().strip() != "ready":
        raise SystemExit(f"{name}: the refitter process did not start")
    found: dict[str, Any] = {"start_both_s": round(time.perf_counter() - started, 1)}
    found["gpu_processes"] = gpu_processes()
    device = "cuda" if args.backend == "tensorrt" else "cpu"  # --backend exported: a CPU smoke test
    inputs = [t.to(device) for t in load_inputs(args.workdir / name / "inputs.safetensors", "inputs")]
    served = {"A": host(model.infer(inputs))}
    for key in "BA":  # B's outputs, for the in-process phase's check; then A serves again
        if model.refit(requests[key]).outcome != Outcome.PASSED:
            raise SystemExit(f"{name}: a refit to {key} did not pass")
        served.setdefault(key, host(model.infer(inputs)))
    think_s = args.think_ms / 1000

    found["idle"] = phase(Load(model, inputs, served, think_s).run(args.clients, args.load_s, None))
    other.stdin.write("go\n")
    other.stdin.flush()
    if other.stdout.readline().strip() != "refitting":
        raise SystemExit(f"{name}: the refitter process did not start refitting")
    found["two_process"] = phase(Load(model, inputs, served, think_s).run(args.clients, args.load_s, None))
    other.stdin.write("stop\n")
    other.stdin.flush()
    found["refitter"] = json.loads(other.stdout.readline())
    found["pieces"] = {}
    for piece in pieces_of(args):
        other.stdin.write(f"go {piece}\n")
        other.stdin.flush()
        if other.stdout.readline().strip() != "refitting":
            raise SystemExit(f"{name}: the refitter process did not start {piece}")
        latency = phase(Load(model, inputs, served, think_s).run(args.clients, args.load_s, None))
        other.stdin.write("stop\n")
        other.stdin.flush()
        found["pieces"][piece] = {"latency": latency, "refitter": json.loads(other.stdout.readline())}
    other.stdin.close()  # the refitter exits at the end of its input
    other.wait(timeout=120)
    found["idle_after"] = phase(Load(model, inputs, served, think_s).run(args.clients, args.load_s, None))
    in_process = refitting_phase(model, inputs, served, requests, args)
    found["in_process"] = {k: v for k, v in in_process.items() if k != "refit_stages_ms_median"}
    found["shares_percent"] = {"serving": serving_share, "refitter": refit_share}
    args.result.write_text(json.dumps(found))
    return 0


def phase(found: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in found.items() if k != "refit_timings"}


def gpu_processes() -> list[str]:
    """nvidia-smi's process rows: their type says M+C for an MPS client, C for a context of its own."""
    try:
        table = subprocess.run(["nvidia-smi"], check=False, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [
        " ".join(line.split()) for line in table.splitlines() if "python" in line or "mps" in line.lower()
    ]


def refitter(args: argparse.Namespace) -> int:
    """Start, say `ready`; then per `go` (refit B, A, ... back to back) or `go PIECE` (repeat one piece
    of a refit) say `refitting`, work until `stop` and answer one JSON line; exit at the end of input."""
    from hot_refit_stages import PAUSE_S, refit_pieces
    from trtrefit.worker.inputs import load_inputs

    model, requests = started_model(args)
    pieces: dict[str, Any] = {}
    if pieces_of(args):
        device = "cuda" if args.backend == "tensorrt" else "cpu"
        inputs = [
            t.to(device) for t in load_inputs(args.workdir / args.models / "inputs.safetensors", "inputs")
        ]
        pieces = refit_pieces(model, args.workdir / args.models, inputs)
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[:1] != ["go"]:
            continue
        stop = threading.Event()
        errors: list[str] = []
        if len(command) == 1:
            timings: list[dict[str, float]] = []
            failures: list[str] = []
            work = threading.Thread(target=refit_loop, args=(model, requests, stop, timings, failures))
        else:
            seconds: list[float] = []
            pause = PAUSE_S.get(command[1], 0.0)
            work = threading.Thread(
                target=piece_loop, args=(pieces[command[1]], stop, seconds, pause, errors)
            )
        work.start()
        print("refitting", flush=True)
        sys.stdin.readline()  # stop
        stop.set()
        work.join()
        if len(command) == 1:
            answer = {
                "refits": len(timings),
                "failures": failures[:5],
                "total_s_median": round(median([t["total"] for t in timings]), 4) if timings else None,
                "stages_ms_median": stage_medians(timings) if timings else None,
            }
        else:
            answer = {
                "runs": len(seconds),
                "median_ms": round(median(seconds) * 1000, 2) if seconds else None,
                "error": errors[0] if errors else None,
            }
        print(json.dumps(answer), flush=True)
    return 0


def refit_loop(
    model: Any, requests: dict[str, Any], stop: threading.Event, timings: list[Any], failures: list[str]
) -> None:
    """Whole refits, B, A, B, ... until `stop`."""
    from trtrefit.api.result import Outcome

    index = 0
    while not stop.is_set():
        key = "B" if index % 2 == 0 else "A"
        result = model.refit(requests[key])
        if result.outcome == Outcome.PASSED:
            timings.append(result.timings)
        else:
            failures.append(f"{key}: {result.outcome.value}: {result.message}"[:300])
        index += 1


def piece_loop(
    piece: Any, stop: threading.Event, seconds: list[float], pause_s: float, errors: list[str]
) -> None:
    """timed_loop, with the error that ended it recorded: a failing piece is a result, not a silent 0 runs."""
    from hot_refit_stages import timed_loop

    try:
        timed_loop(piece, stop, seconds, pause_s)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}"[:300])


def pieces_of(args: argparse.Namespace) -> list[str]:
    return [piece for piece in args.pieces.split(",") if piece]


# -- the report ---------------------------------------------------------------------------------------


def summary(found: dict[str, Any]) -> dict[str, Any]:
    if "error" in found:
        return found
    return {
        "idle_p99": found["idle"]["p99_ms"],
        "two_process_p99": found["two_process"]["p99_ms"],
        "in_process_p99": found["in_process"]["p99_ms"],
        "refits": found["refitter"]["refits"],
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        "# A refit in a process of its own, the GPU shared under MPS: serving latency beside it",
        "",
        f"{result['date']}, commit {result['commit']}, {json.dumps(result['machine'])}; "
        f"versions {json.dumps(result['versions'])}; compute mode {result['compute_mode']}; "
        f"{MPS_CONTROL}: {result['mps_control']}.",
        "",
        f"Command: `{result['command']}` (n: {json.dumps(result['n'])}; "
        f"settings: {json.dumps(result['settings'])}; wall {result.get('wall_s')} s).",
        "",
        "Inference latency in the serving process (ms, p50 / p99 / max; requests; failed):",
        "",
        "| model | setup | idle | beside the refitter process (its refits; median total s) "
        "| idle again | refitting in-process (its refits) |",
        "|---|---|---|---|---|---|",
    ]
    for name, setups in result["models"].items():
        for setup, found in setups.items():
            if "error" in found:
                lines.append(f"| {name} | {setup} | error: {found['error']} | | | |")
                continue
            other = found["refitter"]
            lines.append(
                f"| {name} | {setup} | {cell(found['idle'])} | {cell(found['two_process'])} "
                f"({other['refits']}; {other['total_s_median']}) | {cell(found['idle_after'])} "
                f"| {cell(found['in_process'])} ({found['in_process']['refits']}) |"
            )
    pieces = [
        (n, setup, f)
        for n, setups in result["models"].items()
        for setup, f in setups.items()
        if f.get("pieces")
    ]
    if pieces:
        lines += [
            "",
            "Inference latency in the serving process beside the refitter process repeating ONE piece of a "
            "refit (ms, p50 / p99 / max; requests; failed; the piece's runs and own median ms):",
            "",
            "| model | setup | piece | latency | the piece |",
            "|---|---|---|---|---|",
        ]
        for name, setup, found in pieces:
            for piece, measured in found["pieces"].items():
                other = measured["refitter"]
                lines.append(
                    f"| {name} | {setup} | {piece} | {cell(measured['latency'])} "
                    f"| {other['runs']} runs, {other['median_ms']} ms{failed(other)} |"
                )
    lines += ["", "MPS evidence (nvidia-smi process rows, M+C = an MPS client; the control log's tail):", ""]
    for name, setups in result["models"].items():
        for setup, found in setups.items():
            rows = "; ".join(found.get("gpu_processes", [])) or "none"
            lines.append(f"- {name} {setup}: {rows}")
            if found.get("mps_control_log"):
                lines.append(f"  - control log: {' / '.join(found['mps_control_log'][-4:])}")
    return "\n".join(lines) + "\n"


def failed(piece: dict[str, Any]) -> str:
    return f"; stopped by {piece['error']}" if piece.get("error") else ""


def cell(found: dict[str, Any]) -> str:
    latency = f"{found['p50_ms']} / {found['p99_ms']} / {found['max_ms']}"
    return f"{latency}; {found['requests']}; {found['failed']}"


if __name__ == "__main__":
    sys.exit(main())

"""Hot refits in a live `trtrefit serve` model on a GPU, next to what a refit Job and a recompile cost.

For each model (torchvision resnet50 and vit_b_16 with trained-looking weights, batch 8, fp32), in one
process: compile the bundle with `trtrefit compile --backend tensorrt`'s code, write two checkpoints (A, B:
every tensor of the compiled weights jittered, BatchNorm statistics included), then drive the server's
own `ServingModel` (serving/service.py) the way the HTTP layer does, artifacts on local disk:

  prime       ServingModel.start(A): load the program in two copies (serving/standby.py), refit each
              to A (every Refitter's slow first refit_cuda_engine), verify each. `prime_s` is the first
              copy's apply stage; `start_s` all of start-up.
  hot         >= --refits refits alternating B and A, each a full ServingModel.refit(request): fetch
              + check + stage + reference + digest + apply + verify (on the standby copy, no lock held)
              + lock (the swap), no load. The checkpoints are
              UNPINNED: a sha256 still to compute is computed on a thread beside check/stage/reference
              and waited for (`digest`) before the lock.
  hot pinned  the same with each checkpoint's sha256 pinned: compared before it is parsed. In both, a
              file the process already hashed and that is unchanged since is not hashed again
              (worker/digests.py): the first refit to A and to B hash, the others do not.
  new file    the same, each refit from a fresh copy of A or B (a new inode): nothing is known about
              the file, so it is hashed, as a checkpoint seen for the first time; half of them pinned.
  idle        --clients threads send inference requests (the verification inputs, output copied to the
              host as a server answering would) for --load-s seconds; per-request latency.
  refitting   the same load while refits alternate B/A back to back; every response is checked to be
              exactly A's or B's output (never a mix, never an error): failed_requests. Repeated with
              the serving stream at the refit stream's (default) priority, and with the interpreter's
              GIL switch interval at 0.5 ms, and with pageable copies, to attribute what is left; and
              with a refit's PyTorch work on N SMs of its own (`refit_sms_N`, each with an idle phase
              of its own).
  fresh job   a subprocess `python -m trtrefit.worker refit` (the refit Job's command) to B, wall time.
  recompile   torch_tensorrt.dynamo.compile of the source program carrying B, in this (warm) process.

Writes hot_refit.json and hot_refit.md into --out. On the lent H200 (../shared/gpu/README.md):
    source .gpu/b/stage2.sh && PYTHONPATH=operator:$PYTHONPATH python3 bench/hot_refit.py --out $OUT \
        --commit <the commit the tree is at>
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODELS = {
    "resnet50": "trtrefit.worker.samples:resnet50",
    "vit_b_16": "trtrefit.worker.samples:vit_b_16",
    "small_cnn": "trtrefit.worker.samples:small_cnn",  # a CPU smoke test of this script (--backend exported)
}
IMAGE = {"small_cnn": 32}
# As tests/gpu: TensorRT-RTX's fp32 engines are ~6e-4 of the largest output away from a float64 run, and
# these random-statistics resnets produce outputs up to ~1300.
TOLERANCES = {
    "resnet50": {"rtol": 1e-2, "atol": 2.0, "min_cosine_similarity": 0.99999},
    "vit_b_16": {"rtol": 1e-2, "atol": 1e-2, "min_cosine_similarity": 0.99999},
    "small_cnn": {"rtol": 1e-2, "atol": 1e-2, "min_cosine_similarity": 0.999},
}
TARGETS = {  # DESIGN.md "Performance targets"
    "resnet50": {"hot_total_s": 0.10, "lock_ms": 20.0},
    "vit_b_16": {"hot_total_s": 0.25, "lock_ms": 40.0},
}
STAGES = ("fetch", "check", "stage", "reference", "digest", "wait", "lock", "apply", "verify", "total")
SWITCH_INTERVAL_S = 0.0005


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="resnet50,vit_b_16", help="from " + ", ".join(MODELS))
    parser.add_argument("--backend", choices=("tensorrt", "exported"), default="tensorrt")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--refits", type=int, default=12, help="hot refits per model (alternating B, A)")
    parser.add_argument("--clients", type=int, default=2, help="inference threads during the load phases")
    parser.add_argument("--think-ms", type=float, default=2.0, help="pause between one client's requests")
    parser.add_argument("--load-s", type=float, default=6.0, help="seconds of each load phase")
    parser.add_argument(
        "--attribute-s",
        type=float,
        default=3.0,
        help="seconds of load beside each refit stage alone (0: skip)",
    )
    parser.add_argument(
        "--variants",
        default="",
        help="comma-separated subset of " + ", ".join(VARIANTS) + " (default: all; none: no variant)",
    )
    parser.add_argument(
        "--attribute-split",
        default="",
        metavar="refit_sms_N",
        help="also measure the load beside each refit stage with a refit's PyTorch work on N SMs",
    )
    parser.add_argument("--no-job", action="store_true", help="skip the fresh-process refit Job")
    parser.add_argument("--no-recompile", action="store_true")
    parser.add_argument("--commit", default=os.environ.get("TRTREFIT_COMMIT", "unknown"))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    unknown = set(args.variants.split(",")) - {*VARIANTS, "none", ""}
    if unknown and not all(v.startswith("refit_sms_") for v in unknown):
        parser.error(f"--variants: unknown {', '.join(sorted(unknown))}")

    started = time.time()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="hot-refit-"))
    models: dict[str, Any] = {}
    result = {
        "benchmark": "hot_refit",
        "commit": args.commit,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python3 bench/hot_refit.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "versions": versions(),
        "machine": machine() | {"sha256_gb_per_s_in_memory": sha256_speed()},
        "n": {
            "hot_refits": args.refits,
            "hot_refits_pinned": args.refits,
            "clients": args.clients,
            "load_s": args.load_s,
            # a phase that did not run has no n
            **({"attribute_s": args.attribute_s} if args.attribute_s > 0 else {}),
        },
        "settings": {"batch": args.batch, "think_ms": args.think_ms, "tolerances": TOLERANCES},
        "targets": TARGETS,
        "models": models,
    }
    for name in args.models.split(","):
        log(f"{name}: start")
        models[name] = {}
        bench_model(name, root / name, args, models[name], lambda: write(result, args.out, started))
        log(f"{name}: {json.dumps(summary_line(models[name]))}")
    write(result, args.out, started)
    print(render(result))
    return 0


def write(result: dict[str, Any], out: Path, started: float) -> None:
    """The results so far: written after every phase, so a run cut short still leaves its numbers."""
    result["wall_s"] = round(time.time() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hot_refit.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / "hot_refit.md").write_text(render(result))


def sha256_speed() -> float:
    """hashlib's SHA-256 over 256 MiB already in memory: the ceiling for hashing a checkpoint here."""
    import hashlib

    data = bytes(256 * 1024 * 1024)
    started = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return round(len(data) / (time.perf_counter() - started) / 1e9, 2)


def log(message: str) -> None:
    print(f"[hot_refit] {message}", file=sys.stderr, flush=True)


# -- one model ---------------------------------------------------------------------------------------


def bench_model(
    name: str, root: Path, args: argparse.Namespace, out: dict[str, Any], save: Callable[[], None]
) -> None:
    """Fills `out` phase by phase (`save` after each)."""
    import torch

    from trtrefit.worker.compile import CompileRequest, compile_bundle
    from trtrefit.worker.samples import write_checkpoint
    from trtrefit.worker.storage import hash_file

    spec = MODELS[name]
    started = time.perf_counter()
    size = IMAGE.get(name, 224)
    compile_bundle(
        CompileRequest(output=root, shapes=[(args.batch, 3, size, size)], backend=args.backend, model=spec)
    )
    out["compile_s"] = round(time.perf_counter() - started, 2)
    write_checkpoint(spec, 11, "jitter", root / "A.safetensors")
    write_checkpoint(spec, 12, "jitter", root / "B.safetensors")
    started = time.perf_counter()
    hash_file(root / "B.safetensors")  # just written: in the page cache, as in the hot refits
    out["checkpoint_mb"] = round((root / "B.safetensors").stat().st_size / 1e6, 1)
    out["hash_file_ms"] = round((time.perf_counter() - started) * 1000, 1)
    bench_serving(name, root, args, out, save)
    release(torch)
    save()
    if not args.no_job:
        log(f"{name}: fresh-process refit Job")
        out.update(fresh_job(name, root, args))
        save()
    if not args.no_recompile and args.backend == "tensorrt":
        log(f"{name}: recompile")
        out["recompile_s"] = recompile(root)
    release(torch)


def release(torch: Any) -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def request_for(
    name: str, root: Path, checkpoint: str, args: argparse.Namespace, *, pinned: bool = False
) -> Any:
    from trtrefit.api.request import RefitRequest
    from trtrefit.worker.storage import hash_file

    path = (root / checkpoint).resolve()
    pin = {"sha256": hash_file(path)[0]} if pinned else {}
    return RefitRequest.model_validate(
        {
            "engine": {"uri": (root / "engine.ep").resolve().as_uri()},
            "source": {"uri": (root / "source.pt2").resolve().as_uri()},
            "checkpoint": {"uri": path.as_uri(), **pin},
            "verify": {
                "inputs": {"uri": (root / "inputs.safetensors").resolve().as_uri()},
                **TOLERANCES[name],
            },
            "device": "cuda" if args.backend == "tensorrt" else "cpu",
            "key": f"{checkpoint[0].lower()}{'0' * 7}",
        }
    )


def bench_serving(
    name: str, root: Path, args: argparse.Namespace, out: dict[str, Any], save: Callable[[], None]
) -> None:

    from trtrefit.api.result import Outcome
    from trtrefit.serving.service import ServingModel
    from trtrefit.worker.inputs import load_inputs

    requests = {key: request_for(name, root, f"{key}.safetensors", args) for key in "AB"}
    pinned = {key: request_for(name, root, f"{key}.safetensors", args, pinned=True) for key in "AB"}
    model = ServingModel(name, Path(tempfile.mkdtemp(prefix="serve-", dir=root)))
    memory = {"before_start": device_used_mb()}
    started = time.perf_counter()
    first = model.start(requests["A"])
    start_s = time.perf_counter() - started
    memory["after_start"] = device_used_mb()
    log(f"{name}: started in {start_s:.1f} s, first refit {first.timings}")
    out["start_s"] = round(start_s, 2)
    out["prime_s"] = round(first.timings.get("apply", float("nan")), 3)
    out["first_refit_timings_s"] = rounded(first.timings)
    out["streams"] = stream_priorities(model)
    device = "cuda" if args.backend == "tensorrt" else "cpu"
    inputs = [t.to(device) for t in load_inputs(root / "inputs.safetensors", "inputs")]
    served = {"A": host(model.infer(inputs))}
    out["copies_bitwise_equal"] = copies_alike(model, inputs, served["A"])

    def hot_refits(which: dict[str, Any]) -> list[dict[str, float]]:
        timings = []
        for index in range(args.refits):
            key = "B" if index % 2 == 0 else "A"
            result = model.refit(which[key])
            if result.outcome != Outcome.PASSED:
                raise SystemExit(f"{name}: hot refit to {key} did not pass: {result.message}")
            served.setdefault(key, host(model.infer(inputs)))
            timings.append(result.timings)
        return timings

    hot = hot_refits(requests)
    log(f"{name}: hot refits {[round(t['total'], 3) for t in hot]}")
    lock_ms = median([t["lock"] for t in hot]) * 1000
    out |= {
        "hot_total_s_median": round(median([t["total"] for t in hot]), 4),
        "hot_total_s_p90": round(percentile([t["total"] for t in hot], 90), 4),
        "hot_lock_ms_median": round(lock_ms, 2),
        "hot_stages_ms_median": stage_medians(hot),
        "hot_refits": len(hot),
    }
    memory["after_hot_refits"] = device_used_mb()
    out |= {
        "gpu_memory_mb": memory,
        "server_gpu_memory_mb": memory["after_hot_refits"] - memory["before_start"],
    }
    hot_pinned = hot_refits(pinned)
    log(f"{name}: hot refits, pinned {[round(t['total'], 3) for t in hot_pinned]}")
    out |= {
        "hot_total_s_median_pinned": round(median([t["total"] for t in hot_pinned]), 4),
        "hot_total_s_p90_pinned": round(percentile([t["total"] for t in hot_pinned], 90), 4),
        "hot_stages_ms_median_pinned": stage_medians(hot_pinned),
    }
    save()
    fresh = fresh_file_refits(model, name, root, args)
    log(f"{name}: hot refits, each from a file never seen before {[round(t['total'], 3) for t in fresh]}")
    out |= {
        "hot_total_s_median_new_file": round(median([t["total"] for t in fresh]), 4),
        "hot_total_s_median_new_file_pinned": round(median([t["total"] for t in fresh if t["pinned"]]), 4),
        "hot_stages_ms_median_new_file": stage_medians(fresh),
        "hot_refits_new_file": len(fresh),
    }
    save()

    out |= load_phases(model, inputs, served, requests, args, name=name, lock_ms=lock_ms)
    save()
    out["refitting_variants"] = guarded(lambda: variants(model, inputs, served, requests, args))
    save()
    if args.attribute_s > 0:
        attributions(model, root, inputs, served, args, out=out, save=save)


def load_phases(
    model: Any,
    inputs: list[Any],
    served: dict[str, list[Any]],
    requests: dict[str, Any],
    args: argparse.Namespace,
    *,
    name: str,
    lock_ms: float,
) -> dict[str, Any]:
    """The client load idle, then while refits alternate back to back."""
    think_s = args.think_ms / 1000
    idle = Load(model, inputs, served, think_s).run(args.clients, args.load_s, None)
    log(f"{name}: idle load {idle['requests']} requests, p99 {idle['p99_ms']} ms")
    under_load = refitting_phase(model, inputs, served, requests, args)
    log(f"{name}: load while refitting {under_load['requests']} requests, p99 {under_load['p99_ms']} ms")
    return {
        "infer_p50_ms_idle": idle["p50_ms"],
        "infer_p99_ms_idle": idle["p99_ms"],
        "infer_p50_ms_refitting": under_load["p50_ms"],
        "infer_p99_ms_refitting": under_load["p99_ms"],
        "infer_max_ms_refitting": under_load["max_ms"],
        "requests_idle": idle["requests"],
        "requests_refitting": under_load["requests"],
        "refits_during_load": under_load["refits"],
        "refit_total_s_median_under_load": under_load["refit_total_s_median"],
        "refit_lock_ms_median_under_load": under_load["refit_lock_ms_median"],
        "refit_stages_ms_median_under_load": under_load["refit_stages_ms_median"],
        "failed_requests": idle["failed"] + under_load["failed"],
        "failures": (idle["failures"] + under_load["failures"])[:5],
        "p99_refitting_le_idle_plus_lock": under_load["p99_ms"] <= idle["p99_ms"] + lock_ms,
    }


def device_used_mb() -> int:
    """GPU memory in use on the device (every allocation of the process, TensorRT's too), after PyTorch's
    cache gives back what it holds unused; 0 off CUDA."""
    import torch

    if not torch.cuda.is_available():
        return 0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    return round((total - free) / 2**20)


def copies_alike(model: Any, inputs: list[Any], serving: list[Any]) -> bool:
    """Whether the standby copy answers exactly what the serving copy answered (both hold A after start-up).
    The load phases accept a response only when it equals A's or B's bit for bit, whichever copy served."""
    import torch

    standby = host(model._loaded.live.verify_run(inputs))
    return all(torch.equal(x, y) for x, y in zip(serving, standby, strict=True))


def fresh_file_refits(model: Any, name: str, root: Path, args: argparse.Namespace) -> list[dict[str, float]]:
    """Refits from a fresh copy of B or A each time (a new inode, just written): nothing is known about
    the file, so it is hashed, as a checkpoint seen for the first time is; every other one pinned."""
    import shutil

    from trtrefit.api.result import Outcome

    timings = []
    for index in range(args.refits):
        key = "B" if index % 2 == 0 else "A"
        copy = root / f"fresh-{index}-{key}.safetensors"
        shutil.copyfile(root / f"{key}.safetensors", copy)
        pinned = index % 4 >= 2
        result = model.refit(request_for(name, root, copy.name, args, pinned=pinned))
        copy.unlink()
        if result.outcome != Outcome.PASSED:
            raise SystemExit(f"{name}: refit to a fresh copy of {key} did not pass: {result.message}")
        timings.append({**result.timings, "pinned": float(pinned)})
    return timings


def stage_medians(timings: list[dict[str, float]]) -> dict[str, float]:
    return {s: round(median([t.get(s, 0.0) for t in timings]) * 1000, 2) for s in STAGES}


def guarded(phase: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A diagnostic phase that fails is recorded, not fatal: the targets' numbers are already saved."""
    try:
        return phase()
    except Exception as exc:  # any failure of a diagnostic is a result to record
        log(f"diagnostic phase failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def refitting_phase(
    model: Any, inputs: list[Any], served: dict[str, list[Any]], requests: dict[str, Any], args: Any
) -> dict[str, Any]:
    """The client load while refits alternate B/A back to back."""
    phase = Load(model, inputs, served, args.think_ms / 1000)
    found = phase.run(args.clients, args.load_s, lambda: phase.refitter(requests))
    during = found.pop("refit_timings")
    return found | {
        "refits": len(during),
        "refit_total_s_median": round(median([t["total"] for t in during]), 4) if during else None,
        "refit_lock_ms_median": round(median([t["lock"] for t in during]) * 1000, 2) if during else None,
        "refit_stages_ms_median": stage_medians(during) if during else None,
    }


def stream_priorities(model: Any) -> dict[str, Any]:
    live = model._loaded.live
    if not live.device.startswith("cuda"):
        return {}
    import torch

    from trtrefit.serving import streams

    return {
        "range_lowest_highest": list(torch.cuda.Stream.priority_range()),  # type: ignore[call-arg]  # static
        "serving": streams.serving_stream(live.device).priority,
        "refit": streams.refit_stream(live.device).priority,
        "engines": sorted({e.module._engine_stream.priority for e in live.serving._engines}),
        "standby_engines": sorted({e.module._engine_stream.priority for e in live.standby._engines}),
    }


VARIANTS = (
    "equal_priority",
    "pageable_copies",
    "switch_interval_0.5ms",
    "one_client",
    "refit_sms_16",
    "refit_sms_32",
)


def variants(
    model: Any, inputs: list[Any], served: dict[str, list[Any]], requests: dict[str, Any], args: Any
) -> dict[str, Any]:
    """The refitting phase again with one thing changed: what the priorities, the copies, the GIL and the
    second client account for."""
    from hot_refit_stages import equal_priority, switch_interval
    from trtrefit.serving import streams

    wanted = set(args.variants.split(",")) if args.variants else set(VARIANTS)
    if not model._loaded.live.device.startswith("cuda"):  # no CUDA streams to vary
        wanted &= {"one_client"}
    found: dict[str, Any] = {}
    if "equal_priority" in wanted:
        log("refitting, the serving stream at the refit stream's priority")
        with equal_priority(model):
            found["equal_priority"] = refitting_phase(model, inputs, served, requests, args)
    if "pageable_copies" in wanted:
        log("refitting, weights and outputs copied through pageable host memory")
        streams.PAGE_LOCKED_COPIES = False
        try:
            found["pageable_copies"] = refitting_phase(model, inputs, served, requests, args)
        finally:
            streams.PAGE_LOCKED_COPIES = True
    if "switch_interval_0.5ms" in wanted:
        log(f"refitting, GIL switch interval {SWITCH_INTERVAL_S * 1000} ms")
        with switch_interval(SWITCH_INTERVAL_S):
            found["switch_interval_0.5ms"] = refitting_phase(model, inputs, served, requests, args)
    if "one_client" in wanted:
        # With one client no request queues behind another's after the lock: what is left is the lock.
        log("one client: idle, then refitting")
        idle = Load(model, inputs, served, args.think_ms / 1000).run(1, args.load_s, None)
        one = argparse.Namespace(**{**vars(args), "clients": 1})
        during = refitting_phase(model, inputs, served, requests, one)
        lock_ms = during["refit_lock_ms_median"]
        found["one_client"] = during | {
            "idle_p50_ms": idle["p50_ms"],
            "idle_p99_ms": idle["p99_ms"],
            "idle_requests": idle["requests"],
            "idle_failed": idle["failed"],
            "p99_le_idle_plus_lock": lock_ms is not None and during["p99_ms"] <= idle["p99_ms"] + lock_ms,
        }
    for variant in sorted(wanted):
        if variant.startswith("refit_sms_"):
            phase = functools.partial(split_sms, model, inputs, served, requests, args, variant=variant)
            found[variant] = guarded(phase)
    return found


def split_sms(
    model: Any,
    inputs: list[Any],
    served: dict[str, list[Any]],
    requests: dict[str, Any],
    args: Any,
    *,
    variant: str,
) -> dict[str, Any]:
    """Idle, then refitting, with a refit's PyTorch work on N SMs of its own (--refit-sms N);
    `refit_sms_N+switch_interval_0.5ms` with the GIL switch interval at 0.5 ms as well."""
    from hot_refit_stages import sms_split, switch_interval

    split, _, switch = variant.partition("+")
    refit_sms = int(split.removeprefix("refit_sms_"))
    log(f"refit work on {refit_sms} SMs of its own{' and ' + switch if switch else ''}: idle, then refitting")
    with switch_interval(SWITCH_INTERVAL_S if switch else None), sms_split(model, refit_sms) as partition:
        idle = Load(model, inputs, served, args.think_ms / 1000).run(args.clients, args.load_s, None)
        during = refitting_phase(model, inputs, served, requests, args)
    lock_ms = during["refit_lock_ms_median"]
    return during | {
        "total_sms": partition.total_sms,
        "refit_sms": partition.refit_sms,
        "idle_p50_ms": idle["p50_ms"],
        "idle_p99_ms": idle["p99_ms"],
        "idle_requests": idle["requests"],
        "idle_failed": idle["failed"],
        "p99_le_idle_plus_lock": lock_ms is not None and during["p99_ms"] <= idle["p99_ms"] + lock_ms,
    }


def attributions(
    model: Any,
    root: Path,
    inputs: list[Any],
    served: dict[str, list[Any]],
    args: argparse.Namespace,
    *,
    out: dict[str, Any],
    save: Callable[[], None],
) -> None:
    """The load beside each refit stage alone; again in the split --attribute-split names."""
    where = (model, root, inputs, served, args)
    out["load_beside_one_stage"] = guarded(lambda: attribute_stages(*where))
    save()
    if args.attribute_split and model._loaded.live.device.startswith("cuda"):
        out["load_beside_one_stage_split"] = guarded(lambda: attribute_split(*where))
        save()


def attribute_split(
    model: Any, root: Path, inputs: list[Any], served: dict[str, list[Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """attribute_stages with a refit's PyTorch work on the SMs --attribute-split names, and the idle load
    in that split."""
    from hot_refit_stages import sms_split

    with sms_split(model, int(args.attribute_split.removeprefix("refit_sms_"))) as partition:
        idle = Load(model, inputs, served, args.think_ms / 1000).run(args.clients, args.attribute_s, None)
        del idle["refit_timings"]
        found = attribute_stages(model, root, inputs, served, args)
    return found | {"split": args.attribute_split, "idle": idle, "refit_sms": partition.refit_sms}


def attribute_stages(
    model: Any, root: Path, inputs: list[Any], served: dict[str, list[Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """The client load beside each refit stage on its own (hot_refit_stages.py)."""
    from hot_refit_stages import attribute, timed_loop

    def load(piece: Callable[[], None], pause_s: float) -> dict[str, Any]:
        seconds: list[float] = []
        phase = Load(model, inputs, served, args.think_ms / 1000)
        background = lambda: timed_loop(piece, phase.stop, seconds, pause_s)  # noqa: E731
        found = phase.run(args.clients, args.attribute_s, background)
        del found["refit_timings"]
        return found | {"piece_ms_median": round(median(seconds) * 1000, 2), "piece_runs": len(seconds)}

    log("load beside each refit stage")
    return attribute(model, root, inputs, load)


def host(outputs: list[Any]) -> list[Any]:
    return [t.detach().cpu() for t in outputs]  # ServingModel.infer answers on the host already


class Load:
    """--clients threads of requests for --load-s seconds; with `refits` (the two requests), a refit loop
    alternates them meanwhile. A response that is not exactly A's or B's output counts as failed."""

    def __init__(self, model: Any, inputs: list[Any], served: dict[str, list[Any]], think_s: float) -> None:
        self.model, self.inputs, self.served, self.think_s = model, inputs, served, think_s
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.refit_timings: list[dict[str, float]] = []

    def client(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                outputs = host(self.model.infer(self.inputs))
            except Exception as exc:  # the bench counts every kind of failure
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - started
            with self.lock:
                self.latencies.append(elapsed)
                if not any(same(outputs, reference) for reference in self.served.values()):
                    self.failures.append("a response equal to neither checkpoint's outputs")
            time.sleep(self.think_s)

    def refitter(self, refits: dict[str, Any]) -> None:
        from trtrefit.api.result import Outcome

        index = 0
        while not self.stop.is_set():
            key = "B" if index % 2 == 0 else "A"
            result = self.model.refit(refits[key])
            with self.lock:
                if result.outcome != Outcome.PASSED:  # counted as a failure; its timings stop short
                    self.failures.append(f"refit to {key}: {result.outcome.value}: {result.message}")
                else:
                    self.refit_timings.append(result.timings)
            index += 1

    def run(self, clients: int, seconds: float, background: Callable[[], None] | None) -> dict[str, Any]:
        """The client load for `seconds`, with `background` (a loop until self.stop) beside it."""
        threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        if background is not None:
            threads.append(threading.Thread(target=background, daemon=True))
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=60)
        return {
            **latency_summary([x * 1000 for x in self.latencies]),
            "failed": len(self.failures),
            "failures": self.failures[:5],
            "refit_timings": self.refit_timings,
        }


def same(outputs: list[Any], reference: list[Any]) -> bool:
    import torch

    return len(outputs) == len(reference) and all(
        torch.equal(a, b) for a, b in zip(outputs, reference, strict=True)
    )


def latency_summary(ms: list[float]) -> dict[str, Any]:
    return {
        "requests": len(ms),
        "p50_ms": round(percentile(ms, 50), 3) if ms else None,
        "p99_ms": round(percentile(ms, 99), 3) if ms else None,
        "max_ms": round(max(ms), 3) if ms else None,
    }


def fresh_job(name: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """What a refit Job costs: the worker's command in a new process (imports included), to B."""
    tol = TOLERANCES[name]
    command = [
        sys.executable,
        "-m",
        "trtrefit.worker",
        "refit",
        *["--engine", (root / "engine.ep").resolve().as_uri()],
        *["--source", (root / "source.pt2").resolve().as_uri()],
        *["--checkpoint", (root / "B.safetensors").resolve().as_uri()],
        *["--inputs", (root / "inputs.safetensors").resolve().as_uri()],
        *["--rtol", str(tol["rtol"]), "--atol", str(tol["atol"])],
        *["--min-cosine-similarity", str(tol["min_cosine_similarity"])],
        *["--publish", (root / "published").resolve().as_uri()],
        *["--device", "cuda" if args.backend == "tensorrt" else "cpu"],
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    wall = time.perf_counter() - started
    lines = [line for line in done.stdout.strip().splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    if done.returncode != 0:
        log(f"{name}: the Job exited {done.returncode}: {done.stderr[-2000:]}")
    return {
        "fresh_job_wall_s": round(wall, 2),
        "fresh_job_exit": done.returncode,
        "fresh_job_outcome": result.get("outcome"),
        "fresh_job_path": result.get("path"),
        "fresh_job_timings_s": rounded(result.get("timings", {})),
    }


def recompile(root: Path) -> float:
    """torch_tensorrt.dynamo.compile of the source program with B's weights, as `trtrefit compile` does."""
    import torch
    import torch_tensorrt
    from safetensors.torch import load_file

    from trtrefit.worker import programs
    from trtrefit.worker.inputs import load_inputs

    source = programs.load_program(root / "source.pt2", "source")
    programs.swap_weights(source, load_file(str(root / "B.safetensors")))
    on_gpu = programs.to_device(source, "cuda")
    inputs = [t.cuda() for t in load_inputs(root / "inputs.safetensors", "inputs")]
    torch.cuda.synchronize()
    started = time.perf_counter()
    with programs.quiet_torch():
        compiled = torch_tensorrt.dynamo.compile(
            on_gpu, arg_inputs=inputs, immutable_weights=False, min_block_size=1
        )
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    del compiled
    return round(seconds, 2)


# -- numbers and the report ----------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in timings.items()}


def versions() -> dict[str, str]:
    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        from trtrefit.worker.backends.tensorrt.backend import versions as trt_versions

        found |= trt_versions()
    except ImportError:  # the CPU smoke test (--backend exported)
        pass
    return found


def machine() -> dict[str, Any]:
    found: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        flags = Path("/proc/cpuinfo").read_text()
        found["sha_ni"] = " sha_ni" in flags
        found["cpu"] = next(
            (ln.split(":", 1)[1].strip() for ln in flags.splitlines() if ln.startswith("model name")), None
        )
    except OSError:
        found["sha_ni"] = None
    try:
        query = "--query-gpu=name,driver_version,memory.total"
        text = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
        found["gpu"] = text
    except (OSError, subprocess.SubprocessError):
        found["gpu"] = "unknown"
    return found


def summary_line(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("prime_s", "hot_total_s_median", "hot_lock_ms_median", "infer_p99_ms_idle")
    return {k: m.get(k) for k in (*keys, "infer_p99_ms_refitting", "failed_requests", "fresh_job_wall_s")}


def render(result: dict[str, Any]) -> str:
    models = result["models"]
    machine_ = result["machine"]
    lines = [
        "# Hot refit in a live `trtrefit serve` model (ServingModel: TensorRT engines refitted in place, on a"
        " standby copy swapped in once verified)",
        "",
        f"{result['date']}, commit {result['commit']}, {machine_.get('gpu')}, {machine_.get('cpus')} CPUs "
        f"(SHA-256 flag: {machine_.get('sha_ni')}; hashlib SHA-256 in memory "
        f"{machine_.get('sha256_gb_per_s_in_memory')} GB/s); versions "
        f"{json.dumps(result['versions'], sort_keys=True)}.",
        "",
        f"Command: `{result['command']}` (n: {json.dumps(result['n'])}; wall {result.get('wall_s')} s).",
        "",
        "| | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    rows = [
        ("checkpoint (MB) / hash_file alone (ms)", ("checkpoint_mb", "hash_file_ms")),
        ("prime: first refit after start, apply stage / start-up, both copies (s)", ("prime_s", "start_s")),
        ("hot refit total, unpinned, median / p90 (s)", ("hot_total_s_median", "hot_total_s_p90")),
        (
            "hot refit total, pinned, median / p90 (s)",
            ("hot_total_s_median_pinned", "hot_total_s_p90_pinned"),
        ),
        (
            "hot refit total, a file never seen before, median: all / pinned (s)",
            ("hot_total_s_median_new_file", "hot_total_s_median_new_file_pinned"),
        ),
        ("GPU memory the server holds after its hot refits (MB)", "server_gpu_memory_mb"),
        ("lock held (the swap), median (ms)", "hot_lock_ms_median"),
        ("the two copies compute bit for bit alike", "copies_bitwise_equal"),
        ("inference p50 / p99 idle (ms)", ("infer_p50_ms_idle", "infer_p99_ms_idle")),
        ("inference p50 / p99 while refitting (ms)", ("infer_p50_ms_refitting", "infer_p99_ms_refitting")),
        ("p99 refitting <= idle + lock", "p99_refitting_le_idle_plus_lock"),
        ("failed requests (idle + refitting)", "failed_requests"),
        ("refits during the load phase", "refits_during_load"),
        ("refit total under load, median (s)", "refit_total_s_median_under_load"),
        ("fresh-process refit Job, wall (s)", "fresh_job_wall_s"),
        ("recompile, warm process (s)", "recompile_s"),
    ]
    for label, key in rows:
        keys = key if isinstance(key, tuple) else (key,)
        cells = [" / ".join(str(m.get(k)) for k in keys) for m in models.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += render_variants(models)
    lines += ["", "Hot refit stages, medians (ms), unpinned / pinned:", ""]
    lines += ["| stage | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for stage in STAGES:
        cells = [
            f"{m.get('hot_stages_ms_median', {}).get(stage)} / "
            f"{m.get('hot_stages_ms_median_pinned', {}).get(stage)}"
            for m in models.values()
        ]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines += render_stages(models)
    lines += render_stages(models, "load_beside_one_stage_split")
    lines += ["", "Targets (DESIGN.md):", ""]
    for name, m in models.items():
        target = TARGETS.get(name)
        if not target:
            continue
        total_ok = m.get("hot_total_s_median", float("inf")) <= target["hot_total_s"]
        pinned_ok = m.get("hot_total_s_median_pinned", float("inf")) <= target["hot_total_s"]
        lock_ok = m.get("hot_lock_ms_median", float("inf")) <= target["lock_ms"]
        lines.append(
            f"- {name}: hot total {m.get('hot_total_s_median')} s vs <= {target['hot_total_s']} s "
            f"({'met' if total_ok else 'MISSED'}; pinned {m.get('hot_total_s_median_pinned')} s, "
            f"{'met' if pinned_ok else 'missed'}); lock {m.get('hot_lock_ms_median')} ms vs <= "
            f"{target['lock_ms']} ms ({'met' if lock_ok else 'MISSED'}); failed requests "
            f"{m.get('failed_requests')}; p99 while refitting <= idle p99 + lock: "
            f"{m.get('p99_refitting_le_idle_plus_lock')}"
        )
    return "\n".join(lines) + "\n"


def render_variants(models: dict[str, Any]) -> list[str]:
    """The refitting phase with one thing changed."""
    names = [n for n, m in models.items() if m.get("refitting_variants")]
    if not names:
        return []
    lines = [
        "",
        "The refitting phase again with one thing changed (p50 / p99 / max ms; failed requests; refits):",
        "",
        "| variant | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    cells = [
        f"{models[n].get('infer_p50_ms_refitting')} / {models[n].get('infer_p99_ms_refitting')} / "
        f"{models[n].get('infer_max_ms_refitting')}; {models[n].get('failed_requests')}; "
        f"{models[n].get('refits_during_load')}"
        for n in names
    ]
    lines.append(
        "| as served (standby copy takes the refit; serving stream high priority, refit work low) | "
        + " | ".join(cells)
        + " |"
    )
    variants_ = [v for v in models[names[0]]["refitting_variants"] if v != "error"]
    for variant in variants_:
        row = []
        for name in names:
            got = models[name]["refitting_variants"].get(variant, {})
            row.append(
                f"{got.get('p50_ms')} / {got.get('p99_ms')} / {got.get('max_ms')}; {got.get('failed')}; "
                f"{got.get('refits')}"
            )
        lines.append(f"| {variant} | " + " | ".join(row) + " |")
    for name in names:
        for variant, got in models[name]["refitting_variants"].items():
            if isinstance(got, dict) and "idle_p99_ms" in got:  # a variant with an idle phase of its own
                split = (
                    f" (a refit's PyTorch work on {got['refit_sms']} of {got['total_sms']} SMs)"
                    if "refit_sms" in got
                    else ""
                )
                lines.append(
                    f"\n{name}, {variant}{split}: inference p99 idle {got.get('idle_p99_ms')} ms, while "
                    f"refitting {got.get('p99_ms')} ms, lock {got.get('refit_lock_ms_median')} ms: "
                    f"p99 <= idle + lock: {got.get('p99_le_idle_plus_lock')}"
                )
    errors = {
        n: models[n]["refitting_variants"]["error"]
        for n in names
        if "error" in models[n]["refitting_variants"]
    }
    if errors:
        lines += ["", f"Variant errors: {json.dumps(errors)}"]
    return lines


def render_stages(models: dict[str, Any], key: str = "load_beside_one_stage") -> list[str]:
    """Inference p99 with one refit stage repeating beside it, and that stage's own time; with
    `load_beside_one_stage_split`, in the split --attribute-split named."""
    names = [n for n, m in models.items() if m.get(key)]
    if not names:
        return []
    title = "Inference beside ONE refit stage repeated in a loop"
    if key != "load_beside_one_stage":
        got = models[names[0]][key]
        title += f", {got.get('split')} (idle p99 in that split: " + ", ".join(
            f"{n} {models[n][key].get('idle', {}).get('p99_ms')} ms" for n in names
        )
        title += ")"
    lines = [
        "",
        title + " (p99 ms / max ms; the stage's own median ms):",
        "",
        "| stage | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    skip = {"split", "idle", "refit_sms"}
    stages = list(dict.fromkeys(k for n in names for k in models[n][key] if k not in skip))
    for stage in stages:
        cells = []
        for name in names:
            got = models[name][key].get(stage, {})
            if not isinstance(got, dict):  # a failed diagnostic: its error
                cells.append(str(got))
                continue
            cells.append(f"{got.get('p99_ms')} / {got.get('max_ms')} ({got.get('piece_ms_median')})")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    sys.exit(main())

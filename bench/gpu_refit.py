"""Refit timings on a GPU: trtrefit's fast path (per stage) next to Torch-TensorRT's stock
`refit_module_weights` and a recompile of the same model, every result verified against PyTorch.

For each model (torchvision resnet18, resnet50 and vit_b_16 with trained-looking weights, batch 8, fp32),
in one process, it compiles the bundle with `trtrefit compile --backend tensorrt`, writes a checkpoint
with every tensor changed (BatchNorm statistics included), then times, artifacts already on local disk:
  fast      the whole `trtrefit refit --refit-path fast` pipeline in-process (fetch = hashing the local
            files, check, refit, verify, publish), repeated; the refit stage split into load,
            deserialize, set_weights, engine refit, serialize, install
  stock     torch_tensorrt.dynamo.refit_module_weights(program, new ExportedProgram), weight-map cache off
            (it re-runs the converters on the new weights; the cache path hard-codes BatchNorm eps) and
            optionally on, then verified the same way
  recompile torch_tensorrt.dynamo.compile of the source program carrying the new weights
each --repeat times (medians recorded with n; past --budget-s no further repetitions start).

Writes gpu_refit.json and gpu_refit.md into --out. On the lent H200 (../shared/gpu/README.md):
    source .gpu/b/stage2.sh && PYTHONPATH=operator:$PYTHONPATH python3 bench/gpu_refit.py --out $OUT
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODELS = {
    "resnet18": "trtrefit.worker.samples:resnet18",
    "resnet50": "trtrefit.worker.samples:resnet50",
    "vit_b_16": "trtrefit.worker.samples:vit_b_16",
}
# Per model, as in tests/gpu: TensorRT-RTX's fp32 engines are ~6e-4 of the largest output away from a
# float64 run, and these random-statistics resnets produce outputs up to ~1300.
TOLERANCES = {
    "resnet18": {"rtol": 1e-2, "atol": 2.0, "min_cosine_similarity": 0.99999},
    "resnet50": {"rtol": 1e-2, "atol": 2.0, "min_cosine_similarity": 0.99999},
    "vit_b_16": {"rtol": 1e-2, "atol": 1e-2, "min_cosine_similarity": 0.99999},
}
FAST_STAGES = (
    "refit.deserialize",
    "refit.set_weights",
    "refit.engine",
    "refit.serialize",
    "refit.install.repack",
    "refit.install.load",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated, from: " + ", ".join(MODELS)
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="fast-path runs per model")
    parser.add_argument(
        "--stock", default="off", help="refit_module_weights weight-map cache modes to time (on,off)"
    )
    parser.add_argument("--no-recompile", action="store_true")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=520.0,
        help="past this many seconds, stop repeating (each measurement still runs once; counts recorded)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)

    from trtrefit.worker.backends.tensorrt.backend import versions

    args.deadline = time.perf_counter() + args.budget_s
    report: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {**versions(), "cuda": _cuda_version(), "driver": _driver_version()},
        "batch": args.batch,
        "tolerances": TOLERANCES,
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu-refit-") as tmp:
        for name in [m for m in args.models.split(",") if m]:
            print(f"[bench] {name}", file=sys.stderr, flush=True)
            report["models"][name] = bench_model(name, Path(tmp) / name, args)
            write(report, args.out)
    print(json.dumps(report, indent=2))
    return 0


def bench_model(name: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from trtrefit.worker.compile import CompileRequest, compile_bundle
    from trtrefit.worker.samples import write_checkpoint

    spec = MODELS[name]
    manifest = json.loads(
        compile_bundle(
            CompileRequest(output=root, shapes=[(args.batch, 3, 224, 224)], backend="tensorrt", model=spec)
        )
    )
    checkpoint = root / "new.safetensors"
    write_checkpoint(spec, 1, "jitter", checkpoint)
    result: dict[str, Any] = {
        "weights_mb": round(checkpoint.stat().st_size / 1e6, 1),
        "compile_s": manifest["timings"]["compile"],
        "export_s": manifest["timings"]["export"],
        "record": manifest.get("refitRecord"),
        "fast": bench_fast(root, checkpoint, args, TOLERANCES[name]),
        "stock": {},
    }
    for mode in [m for m in args.stock.split(",") if m]:
        print(f"[bench] {name}: refit_module_weights, weight-map cache {mode}", file=sys.stderr, flush=True)
        stock = functools.partial(bench_stock, root, checkpoint, mode == "on", TOLERANCES[name])
        result["stock"][mode] = medians(repeated(args, stock))
    if not args.no_recompile:
        print(f"[bench] {name}: recompile", file=sys.stderr, flush=True)
        result["recompile"] = medians(
            repeated(args, lambda: bench_recompile(root, checkpoint, TOLERANCES[name]))
        )
    return result


def repeated(args: argparse.Namespace, measure: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """`measure` --repeat times, or fewer once past the time budget (never fewer than once)."""
    runs = [measure()]
    while len(runs) < args.repeat and time.perf_counter() < args.deadline:
        runs.append(measure())
    return runs


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every timing (`*_s`) over the runs; the verification of the worst run."""
    summary: dict[str, Any] = {"repetitions": len(runs)}
    for key in runs[0]:
        if key.endswith("_s"):
            summary[key] = round(statistics.median(r[key] for r in runs), 3)
    worst = max(runs, key=lambda r: (not r["verification"]["passed"], r["verification"]["maxAbsError"]))
    summary["verification"] = worst["verification"]
    summary["runs"] = [{k: v for k, v in r.items() if k.endswith("_s")} for r in runs]
    return summary


def bench_fast(
    root: Path, checkpoint: Path, args: argparse.Namespace, tolerances: dict[str, float]
) -> dict[str, Any]:
    from trtrefit.api.request import RefitRequest
    from trtrefit.worker.progress import Progress
    from trtrefit.worker.refit import run_refit

    request = RefitRequest.model_validate(
        {
            "engine": {"uri": (root / "engine.ep").as_uri()},
            "source": {"uri": (root / "source.pt2").as_uri()},
            "checkpoint": {"uri": checkpoint.as_uri()},
            "verify": {
                "inputs": {"uri": (root / "inputs.safetensors").as_uri()},
                "rtol": tolerances["rtol"],
                "atol": tolerances["atol"],
                "minCosineSimilarity": tolerances["min_cosine_similarity"],
            },
            "publish": {"uri": (root / "refits").as_uri()},
            "refitPath": "fast",
        }
    )

    def once() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(dir=root) as work:
            result = run_refit(request, Path(work), Progress())
        return {
            "outcome": result.outcome.value,
            "path": result.path.value if result.path else None,
            "message": result.message,
            "timings": result.timings,
            "verification": result.verification.model_dump(by_alias=True, exclude={"outputs"})
            if result.verification
            else None,
        }

    runs = repeated(args, once)
    passed = [r for r in runs if r["outcome"] == "passed"]
    summary: dict[str, Any] = {"runs": runs, "passed": len(passed) == len(runs)}
    if passed:
        for key in ("total", "refit", "verify", "check", "fetch", "publish", "refit.install", *FAST_STAGES):
            values = [r["timings"].get(key, 0.0) for r in passed]
            summary[f"{key}_median_s"] = round(statistics.median(values), 4)
    return summary


def _new_weights_program(root: Path, checkpoint: Path) -> Any:
    from safetensors.torch import load_file

    from trtrefit.worker import programs

    source = programs.load_program(root / "source.pt2", "source")
    programs.swap_weights(source, load_file(str(checkpoint)))
    return programs.to_device(source, "cuda")


def _inputs(root: Path) -> list[Any]:
    from trtrefit.worker.inputs import load_inputs

    return [t.cuda() for t in load_inputs(root / "inputs.safetensors", "inputs")]


def _verified(
    outputs: list[Any], reference: Any, inputs: list[Any], tolerances: dict[str, float]
) -> dict[str, Any]:
    from trtrefit.worker import programs
    from trtrefit.worker.refit import exact_fp32
    from trtrefit.worker.verify import Tolerances, verify

    with exact_fp32("cuda"):
        expected = programs.run(reference, inputs)
    report = verify(outputs, expected, Tolerances(**tolerances))
    numbers = report.verification.model_dump(by_alias=True, exclude={"outputs"})
    return {**numbers, "message": report.message}


def bench_stock(
    root: Path, checkpoint: Path, use_cache: bool, tolerances: dict[str, float]
) -> dict[str, Any]:
    import torch
    from torch.utils import _pytree

    from trtrefit.worker import programs
    from trtrefit.worker.backends.tensorrt.backend import tensorrt_module

    tensorrt_module()
    from torch_tensorrt.dynamo import refit_module_weights

    inputs = _inputs(root)
    new_weights = _new_weights_program(root, checkpoint)
    started = time.perf_counter()
    program = programs.load_program(root / "engine.ep", "engine")
    loaded = time.perf_counter()
    with programs.quiet_torch():
        refitted = refit_module_weights(
            program, new_weights, arg_inputs=tuple(inputs), use_weight_map_cache=use_cache, in_place=False
        )
    torch.cuda.synchronize()
    done = time.perf_counter()
    with torch.inference_mode():
        outputs = [t for t in _pytree.tree_leaves(refitted(*inputs)) if isinstance(t, torch.Tensor)]
    return {
        "load_s": round(loaded - started, 3),
        "refit_module_weights_s": round(done - loaded, 3),
        "verification": _verified(outputs, new_weights, inputs, tolerances),
    }


def bench_recompile(root: Path, checkpoint: Path, tolerances: dict[str, float]) -> dict[str, Any]:
    import torch
    from torch.utils import _pytree

    from trtrefit.worker import programs
    from trtrefit.worker.backends.tensorrt.backend import tensorrt_module

    tensorrt_module()
    import torch_tensorrt

    inputs = _inputs(root)
    new_weights = _new_weights_program(root, checkpoint)
    started = time.perf_counter()
    with programs.quiet_torch():
        compiled = torch_tensorrt.dynamo.compile(
            new_weights, arg_inputs=inputs, immutable_weights=False, min_block_size=1
        )
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    with torch.inference_mode():
        outputs = [t for t in _pytree.tree_leaves(compiled(*inputs)) if isinstance(t, torch.Tensor)]
    return {
        "compile_s": round(seconds, 3),
        "verification": _verified(outputs, new_weights, inputs, tolerances),
    }


def _cuda_version() -> str:
    import torch

    return str(torch.version.cuda)


def _driver_version() -> str:
    import subprocess

    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return found.stdout.strip().splitlines()[0] if found.stdout.strip() else "unknown"


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_refit.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_refit.md").write_text(markdown(report))


def _s(value: Any) -> str:
    return f"{value:.2f} s" if isinstance(value, (int, float)) else "—"


def _checked(verification: dict[str, Any] | None) -> str:
    if not verification:
        return "not verified"
    verdict = "verified" if verification.get("passed") else "**FAILED verification**"
    return (
        f"{verdict}: max abs {verification['maxAbsError']:.3g}, "
        f"cosine {verification['minCosineSimilarity']:.7f}"
    )


def _stock_cell(stock: dict[str, Any] | None) -> str:
    if not stock:
        return "—"
    verdict = _checked(stock["verification"])
    times = f"{_s(stock['refit_module_weights_s'])} + load {_s(stock['load_s'])}"
    return f"{times} (n={stock['repetitions']}; {verdict})"


def _fast_cell(fast: dict[str, Any]) -> str:
    first = fast["runs"][0]
    if not fast["passed"]:
        return f"**{first['outcome']}**: {first['message'][:160]}"
    split = f"refit {_s(fast.get('refit_median_s'))}, verify {_s(fast.get('verify_median_s'))}"
    runs = len(fast["runs"])
    return f"{_s(fast.get('total_median_s'))} (n={runs}; {split}; {_checked(first['verification'])})"


def _refit_rest(fast: dict[str, Any]) -> float | None:
    """Median over the passed runs of the refit stage's untimed remainder."""
    rests = [
        r["timings"]["refit"] - sum(r["timings"].get(stage, 0.0) for stage in FAST_STAGES)
        for r in fast["runs"]
        if r["outcome"] == "passed" and "refit" in r["timings"]
    ]
    return round(statistics.median(rests), 4) if rests else None


def markdown(report: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    lines = [
        "# Refit on the GPU: trtrefit fast path vs refit_module_weights vs recompile",
        "",
        f"{report['date']}; {versions}; batch {report['batch']}, fp32.",
        "",
        "Artifacts already on local disk. *fast* is the whole `trtrefit refit --refit-path fast` pipeline "
        "(hash the inputs, check, refit, verify against PyTorch in IEEE fp32, publish); its refit stage is "
        "split below. Every time is the median of n runs, all in one process, one run. *stock* is "
        "`refit_module_weights` on the loaded program (load "
        "shown apart). Every result is verified against the same PyTorch reference with the tolerances "
        "in the JSON.",
        "",
        "| model | weights | compile | fast: total | refit_module_weights, cache off | cache on "
        "| recompile |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in report["models"].items():
        recompile = m.get("recompile")
        recompile_cell = (
            f"{_s(recompile['compile_s'])} (n={recompile['repetitions']}; "
            f"{_checked(recompile['verification'])})"
            if recompile
            else "—"
        )
        lines.append(
            f"| {name} | {m['weights_mb']} MB | {_s(m['compile_s'])} | {_fast_cell(m['fast'])} | "
            f"{_stock_cell(m['stock'].get('off'))} | {_stock_cell(m['stock'].get('on'))} | {recompile_cell} |"
        )
    stages = ("fetch", "check", "refit", *FAST_STAGES, "refit.map+rest", "verify", "publish", "total")
    lines += ["", "Fast path per stage, medians (seconds):", "", "| model | " + " | ".join(stages) + " |"]
    lines.append("|---|" + "---|" * len(stages))
    for name, m in report["models"].items():
        medians_s = {**m["fast"], "refit.map+rest_median_s": _refit_rest(m["fast"])}
        cells = [
            f"{medians_s[f'{stage}_median_s']:.3f}" if medians_s.get(f"{stage}_median_s") is not None else "—"
            for stage in stages
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "refit.map+rest: the refit stage less its timed parts (per run, then the median): naming every "
        "engine weight's source (the plan), creating the Refitter and listing its weights.",
    ]
    lines += ["", "Produced by:", "", "```", report["command"], "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

"""Diagnose the TensorRT fast path on a GPU: for each model, compile the bundle, refit it once through the
fast path and once through `refit_module_weights` (weight-map cache off, which re-lowers the new weights),
and report

  * per engine weight name, how the value the fast path sets differs from the value the stock path sets
    (the stock path re-runs Torch-TensorRT's converters on the new weights: the ground truth per weight);
  * the outputs of both refitted engines against each other and against PyTorch references of different
    precision: float64, float32 with TF32 off, and PyTorch's defaults (cuDNN convolutions in TF32);
  * the same for the engine as compiled (old weights): the precision floor before any refit;
  * the fast path's time per stage.

    source .gpu/b/stage2.sh && PYTHONPATH=operator:$PYTHONPATH python3 bench/trt_debug.py --out $OUT
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODELS = {
    "resnet50": "trtrefit.worker.samples:resnet50",
    "vit_b_16": "trtrefit.worker.samples:vit_b_16",
    "small_cnn": "trtrefit.worker.samples:small_cnn",
}
TOLERANCES = {"rtol": 1e-2, "atol": 1e-2}


def compare(actual: Any, reference: Any) -> dict[str, Any]:
    import torch

    a = actual.detach().double().cpu().reshape(-1)
    r = reference.detach().double().cpu().reshape(-1)
    err = (a - r).abs()
    within = err <= TOLERANCES["atol"] + TOLERANCES["rtol"] * r.abs()
    worst = int(err.argmax())
    return {
        "max_abs": float(err.max()),
        "mean_abs": float(err.mean()),
        "max_abs_over_max_ref": float(err.max() / r.abs().max().clamp_min(1e-30)),
        "cosine": float(torch.nn.functional.cosine_similarity(a, r, dim=0)),
        "max_ref": float(r.abs().max()),
        "ref_std": float(r.std()),
        "fails_allclose": int((~within).sum()),
        "worst": {"index": worst, "actual": float(a[worst]), "reference": float(r[worst])},
        "bitwise_equal": bool(torch.equal(actual.detach().cpu(), reference.detach().cpu())),
    }


def torch_reference(spec: str, state: dict[str, Any], inputs: list[Any], mode: str) -> Any:
    """The factory's module with `state`, run on CUDA in float64, strict float32 or PyTorch defaults."""
    import torch

    from trtrefit.worker.refit import exact_fp32
    from trtrefit.worker.samples import load_factory

    model = load_factory(spec)().eval()
    model.load_state_dict(state)
    dtype = torch.float64 if mode == "fp64" else torch.float32
    model = model.to(device="cuda", dtype=dtype)
    args = [t.to(device="cuda", dtype=dtype) for t in inputs]
    guard = contextlib.nullcontext() if mode == "default" else exact_fp32("cuda")
    with torch.inference_mode(), guard:
        return model(*args)


def run_program(program: Any, inputs: list[Any]) -> Any:
    from trtrefit.worker import programs

    return programs.run(program, [t.cuda() for t in inputs])[0]


def step(report: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        value = fn()
        report.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 3)
        return value
    except Exception as exc:
        report.setdefault("errors", {})[name] = "".join(traceback.format_exception(exc))[-3000:]
        print(f"[debug] {name} failed: {exc}", file=sys.stderr, flush=True)
        return None


def fast_refit(root: Path, checkpoint: Path, report: dict[str, Any]) -> Any:
    from trtrefit.api.jobspec import Device
    from trtrefit.api.request import RefitPolicy
    from trtrefit.worker import programs
    from trtrefit.worker.backends import RefitWork
    from trtrefit.worker.backends.tensorrt.backend import TensorRTBackend
    from trtrefit.worker.formats import load_checkpoint
    from trtrefit.worker.inputs import load_inputs
    from trtrefit.worker.progress import Progress

    progress = Progress()
    with progress.stage("open"):
        backend = TensorRTBackend(root / "engine.ep", "engine", Device.CUDA)
        ckpt = load_checkpoint(checkpoint, "checkpoint")
        reference = programs.load_program(root / "source.pt2", "source")
        programs.swap_weights(reference, ckpt.state)
        inputs = load_inputs(root / "inputs.safetensors", "inputs")
    work = Path(tempfile.mkdtemp(dir=root))
    with progress.stage("refit"):
        backend.refit(RefitWork(ckpt, reference, inputs, Device.CUDA, work, RefitPolicy.FAST), progress)
    with progress.stage("run_engine"):
        out = backend.run(inputs)[0]
    report["fast_timings"] = progress.timings
    return out


def stock_refit(root: Path, checkpoint: Path, report: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """refit_module_weights without the cache; returns the outputs and the mapping it set (name->tensor)."""
    import torch
    from safetensors.torch import load_file
    from torch.utils import _pytree

    from trtrefit.worker import programs
    from trtrefit.worker.backends.tensorrt.backend import tensorrt_module
    from trtrefit.worker.inputs import load_inputs

    tensorrt_module()
    import torch_tensorrt.dynamo._refit as refit_mod

    captured: dict[str, Any] = {}
    original = refit_mod.construct_refit_mapping

    def capture(*args: Any, **kwargs: Any) -> Any:
        mapping = original(*args, **kwargs)
        captured.update({k: v.detach().clone() for k, v in mapping.items()})
        return mapping

    refit_mod.construct_refit_mapping = capture
    try:
        new = programs.load_program(root / "source.pt2", "source")
        programs.swap_weights(new, load_file(str(checkpoint)))
        new = programs.to_device(new, "cuda")
        inputs = [t.cuda() for t in load_inputs(root / "inputs.safetensors", "inputs")]
        program = programs.load_program(root / "engine.ep", "engine")
        started = time.perf_counter()
        with programs.quiet_torch():
            refitted = refit_mod.refit_module_weights(
                program, new, arg_inputs=tuple(inputs), use_weight_map_cache=False, in_place=False
            )
        report["stock_refit_s"] = round(time.perf_counter() - started, 3)
        with torch.inference_mode():
            outs = [t for t in _pytree.tree_leaves(refitted(*inputs)) if isinstance(t, torch.Tensor)]
    finally:
        refit_mod.construct_refit_mapping = original
    return outs[0], captured


def weight_diffs(root: Path, checkpoint: Path, stock: dict[str, Any]) -> dict[str, Any]:
    """Our planned value of every weight the stock path set, against the stock value."""
    from trtrefit.worker import programs
    from trtrefit.worker.backends.tensorrt.archive import read_engines, read_record
    from trtrefit.worker.backends.tensorrt.plan import batchnorm_eps, materialize, plan_engine
    from trtrefit.worker.backends.tensorrt.record import engine_record
    from trtrefit.worker.formats import TensorSpec, load_checkpoint

    ckpt = load_checkpoint(checkpoint, "checkpoint")
    source = programs.load_program(root / "source.pt2", "source")
    eps = batchnorm_eps(source)
    specs = {n: TensorSpec.of(t) for n, t in ckpt.state.items()}
    entries = read_engines(root / "engine.ep", "engine")
    record = read_record(root / "engine.ep")
    names = list(stock)
    out: dict[str, Any] = {"engines": [e.name for e in entries], "stock_names": len(names), "rows": []}
    entry = entries[0]
    engine_rec = engine_record(record, entry.name, set(names))
    out["record_found"] = engine_rec is not None
    out["record_names_not_in_stock"] = sorted(set(engine_rec or {}) - set(names))[:20]
    plan = plan_engine(names, entry.weight_name_map(), engine_rec, specs, eps)
    out["unresolved"] = dict(list(plan.unresolved.items())[:20])
    rows: list[dict[str, Any]] = []
    for name in names:
        value = stock[name].reshape(-1)
        source_ = plan.sources.get(name)
        if source_ is None:
            continue
        try:
            ours = materialize(source_, ckpt.state, value.numel(), value.dtype, "cpu")
            diff = float((ours.double() - value.double().cpu()).abs().max())
        except Exception as exc:
            rows.append({"name": name, "source": repr(source_), "error": str(exc)})
            continue
        if diff != 0.0:
            rows.append(
                {
                    "name": name,
                    "source": repr(source_),
                    "max_diff": diff,
                    "stock_head": [float(v) for v in value.reshape(-1)[:4]],
                    "ours_head": [float(v) for v in ours[:4]],
                    "numel": value.numel(),
                }
            )
    rows.sort(key=lambda r: -float(r.get("max_diff", 1e30)))
    out["differing"] = len(rows)
    out["rows"] = rows[:40]
    kinds: dict[str, int] = {}
    for s in plan.sources.values():
        kinds[type(s).__name__] = kinds.get(type(s).__name__, 0) + 1
    out["source_kinds"] = kinds
    return out


VARIANTS = {
    "novalid": {"validation": False},
    "threads": {"threads": True},
    "both": {"validation": False, "threads": True},
    "both_async": {"validation": False, "threads": True, "async": True},
    "both_host": {"validation": False, "threads": True, "host": True},
}


def refit_variants(root: Path, checkpoint: Path, labels: list[str]) -> dict[str, Any]:  # noqa: PLR0915
    """Time the engine refit under Refitter settings; the serialized results' digests show whether they
    made the same engine."""
    import hashlib
    import os

    import torch

    from trtrefit.worker import programs
    from trtrefit.worker.backends.tensorrt.archive import read_engines, read_record
    from trtrefit.worker.backends.tensorrt.backend import (
        serialize_engine,
        set_planned_weights,
        tensorrt_module,
    )
    from trtrefit.worker.backends.tensorrt.plan import batchnorm_eps, plan_engine
    from trtrefit.worker.backends.tensorrt.record import engine_record
    from trtrefit.worker.formats import TensorSpec, load_checkpoint

    trt = tensorrt_module()
    ckpt = load_checkpoint(checkpoint, "checkpoint")
    eps = batchnorm_eps(programs.load_program(root / "source.pt2", "source"))
    specs = {n: TensorSpec.of(t) for n, t in ckpt.state.items()}
    entry = read_engines(root / "engine.ep", "engine")[0]
    record = read_record(root / "engine.ep")
    blob = entry.engine_bytes()
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    threads = os.cpu_count() or 1
    results: dict[str, Any] = {}
    for label in labels:
        opts = VARIANTS[label]
        row: dict[str, Any] = {}
        t = time.perf_counter()
        engine = runtime.deserialize_cuda_engine(blob)
        row["deserialize"] = time.perf_counter() - t
        refitter = trt.Refitter(engine, logger)
        if opts.get("threads"):
            refitter.max_threads = threads
        if "validation" in opts:
            refitter.weights_validation = opts["validation"]
        names = list(refitter.get_all_weights())
        plan = plan_engine(
            names, entry.weight_name_map(), engine_record(record, entry.name, set(names)), specs, eps
        )
        device = "cpu" if opts.get("host") else "cuda"
        t = time.perf_counter()
        keep = set_planned_weights(trt, refitter, names, plan, ckpt.state, device=device)
        row["set_weights"] = time.perf_counter() - t
        t = time.perf_counter()
        if opts.get("async"):
            stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            ok = refitter.refit_cuda_engine_async(stream.cuda_stream)
            stream.synchronize()
        else:
            ok = refitter.refit_cuda_engine()
        row["refit"] = time.perf_counter() - t
        row["ok"] = bool(ok)
        t = time.perf_counter()
        context = engine.create_execution_context()
        row["context_on_refitted"] = time.perf_counter() - t
        del context
        t = time.perf_counter()
        new_blob = serialize_engine(trt, engine)
        row["serialize"] = time.perf_counter() - t
        row["sha256"] = hashlib.sha256(new_blob).hexdigest()[:16]
        second = trt.Runtime(logger)
        if opts.get("threads"):
            second.max_threads = threads
        t = time.perf_counter()
        again = second.deserialize_cuda_engine(new_blob)
        row["deserialize_new"] = time.perf_counter() - t
        t = time.perf_counter()
        context = again.create_execution_context()
        row["context_new"] = time.perf_counter() - t
        del context, again, engine, refitter, keep
        results[label] = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        print(f"[debug] variant {label}: {results[label]}", file=sys.stderr, flush=True)
    return results


def compile_no_tf32(root: Path, inputs: list[Any]) -> Any:
    import torch_tensorrt

    from trtrefit.worker import programs

    source = programs.to_device(programs.load_program(root / "source.pt2", "source"), "cuda")
    with programs.quiet_torch():
        compiled = torch_tensorrt.dynamo.compile(
            source,
            arg_inputs=[t.cuda() for t in inputs],
            immutable_weights=False,
            min_block_size=1,
            disable_tf32=True,
        )
    import torch
    from torch.utils import _pytree

    with torch.inference_mode():
        result = compiled(*[t.cuda() for t in inputs])
    return next(t for t in _pytree.tree_leaves(result) if isinstance(t, torch.Tensor))


def debug_model(name: str, root: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:  # noqa: C901
    from safetensors.torch import load_file

    from trtrefit.worker import programs
    from trtrefit.worker.backends.tensorrt.backend import tensorrt_module
    from trtrefit.worker.compile import CompileRequest, compile_bundle
    from trtrefit.worker.inputs import load_inputs
    from trtrefit.worker.samples import write_checkpoint

    spec = MODELS[name]
    report: dict[str, Any] = {}
    out[name] = report
    request = CompileRequest(output=root, shapes=[(args.batch, 3, 224, 224)], backend="tensorrt", model=spec)
    if name == "small_cnn":
        request = CompileRequest(
            output=root, shapes=[(args.batch, 3, 32, 32)], backend="tensorrt", model=spec
        )
    manifest = step(report, "compile_bundle", lambda: json.loads(compile_bundle(request)))
    report["record_kinds"] = (manifest or {}).get("refitRecord")
    checkpoint = root / "new.safetensors"
    write_checkpoint(spec, 1, "jitter", checkpoint)
    tensorrt_module()
    inputs = load_inputs(root / "inputs.safetensors", "inputs")
    old_state = {k: v.detach().cpu() for k, v in programs.weights_of(
        programs.load_program(root / "source.pt2", "source")).items()}  # fmt: skip
    new_state = load_file(str(checkpoint))
    refs = {}
    for mode in ("fp64", "fp32", "default"):
        refs[f"new_{mode}"] = step(
            report, f"ref_new_{mode}", functools.partial(torch_reference, spec, new_state, inputs, mode)
        )
        refs[f"old_{mode}"] = step(
            report, f"ref_old_{mode}", functools.partial(torch_reference, spec, old_state, inputs, mode)
        )
    outputs = {}
    outputs["compiled_old"] = step(
        report,
        "run_compiled",
        lambda: run_program(programs.load_program(root / "engine.ep", "engine"), inputs),
    )
    outputs["fast_new"] = step(report, "fast_refit", lambda: fast_refit(root, checkpoint, report))
    if args.variants:
        labels = args.variants.split(",")
        report["variants"] = step(report, "variants", lambda: refit_variants(root, checkpoint, labels))
    stock = step(report, "stock_refit", lambda: stock_refit(root, checkpoint, report)) if args.stock else None
    if stock is not None:
        outputs["stock_new"], mapping = stock
        report["weights"] = step(report, "weight_diffs", lambda: weight_diffs(root, checkpoint, mapping))
    if args.no_tf32 and name == "resnet50":
        outputs["compiled_old_no_tf32"] = step(
            report, "compile_no_tf32", lambda: compile_no_tf32(root, inputs)
        )
    comparisons: dict[str, Any] = {}
    for label, value in outputs.items():
        if value is None:
            continue
        which = "old" if label.startswith("compiled") else "new"
        for mode in ("fp64", "fp32", "default"):
            if refs.get(f"{which}_{mode}") is not None:
                comparisons[f"{label}_vs_ref_{mode}"] = compare(value, refs[f"{which}_{mode}"])
    if outputs.get("fast_new") is not None and outputs.get("stock_new") is not None:
        comparisons["fast_vs_stock"] = compare(outputs["fast_new"], outputs["stock_new"])
    if refs.get("new_fp32") is not None and refs.get("new_fp64") is not None:
        comparisons["torch_fp32_vs_fp64"] = compare(refs["new_fp32"], refs["new_fp64"])
        comparisons["torch_default_vs_fp64"] = compare(refs["new_default"], refs["new_fp64"])
    report["comparisons"] = comparisons


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="resnet50,vit_b_16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-tf32", action="store_true", help="also compile resnet50 with TF32 off")
    parser.add_argument("--variants", default="", help="Refitter settings to time: " + ",".join(VARIANTS))
    parser.add_argument("--no-stock", dest="stock", action="store_false")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip models started after this")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="trt-debug-") as tmp:
        for name in [m for m in args.models.split(",") if m]:
            if time.perf_counter() - started > args.budget_s:
                result[name] = {"skipped": "time budget"}
                continue
            print(f"[debug] {name}", file=sys.stderr, flush=True)
            debug_model(name, Path(tmp) / name, args, result)
            (args.out / "trt_debug.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

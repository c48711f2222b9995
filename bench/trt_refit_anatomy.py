"""Where TensorRT's own engine refit (`Refitter.refit_cuda_engine`) spends its time, on the GPU.

The fast path sets every engine weight in ~0.03 s; `refit_cuda_engine` then takes seconds on
TensorRT-RTX. This script times that one call under conditions that tell fixed costs from per-byte costs:

  first          fresh engine, every weight set, refit (what the fast path does)
  second         the same Refitter again, every weight set again, refit
  one            fresh engine, a single weight set, refit (TensorRT-RTX under-reports missing weights)
  context_first  fresh engine, an execution context created first, then every weight set, refit

each with the process CPU time (user, system) next to the wall time, and (unless --no-profile) a fifth
refit under PyTorch's profiler: the CUDA kernels TensorRT runs during the call.

--mode persist asks whether the cost is paid once per engine file: refit with checkpoint 1, then with
checkpoint 2 on the same Refitter, on the first result serialized and deserialized again, and on the
original engine; --mode from-primed repeats the middle one in a new process. Serialized digests show
which results are the same engine.
--mode split asks whether the work divides: the engine's weights in K parts, one Refitter each on the
same engine, refitted one after another and from K threads at once; digests and outputs against one
full refit show whether the parts make the same engine.
--mode runtime-cache asks whether TensorRT-RTX's runtime cache (attached to an execution context) carries
it, in the same process; --mode runtime-cache-load, from the cache file in a new process.

    source .gpu/b/stage2.sh && PYTHONPATH=operator:$PYTHONPATH python3 bench/trt_refit_anatomy.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODELS = {
    "resnet18": "trtrefit.worker.samples:resnet18",
    "resnet50": "trtrefit.worker.samples:resnet50",
    "vit_b_16": "trtrefit.worker.samples:vit_b_16",
}


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


class Prepared:
    """A compiled bundle's single engine, its refit plan and the new checkpoint, ready to refit."""

    def __init__(self, name: str, root: Path, batch: int) -> None:
        from trtrefit.worker import programs
        from trtrefit.worker.backends.tensorrt.archive import read_engines, read_record
        from trtrefit.worker.backends.tensorrt.backend import tensorrt_module
        from trtrefit.worker.backends.tensorrt.plan import batchnorm_eps
        from trtrefit.worker.compile import CompileRequest, compile_bundle
        from trtrefit.worker.formats import TensorSpec, load_checkpoint
        from trtrefit.worker.samples import write_checkpoint

        spec = MODELS[name]
        if not (root / "engine.ep").exists():
            compile_bundle(
                CompileRequest(output=root, shapes=[(batch, 3, 224, 224)], backend="tensorrt", model=spec)
            )
        write_checkpoint(spec, 1, "jitter", root / "new.safetensors")
        self.trt = tensorrt_module()
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.state = load_checkpoint(root / "new.safetensors", "checkpoint").state
        self.specs = {n: TensorSpec.of(t) for n, t in self.state.items()}
        self.eps = batchnorm_eps(programs.load_program(root / "source.pt2", "source"))
        entries = read_engines(root / "engine.ep", "engine")
        if len(entries) != 1:
            raise SystemExit(f"{name}: expected one engine, found {len(entries)}")
        self.entry = entries[0]
        self.record = read_record(root / "engine.ep")
        self.blob = self.entry.engine_bytes()
        self.weights_mb = sum(t.numel() * t.element_size() for t in self.state.values()) / 1e6

    def plan(self, names: list[str]) -> Any:
        """The fast path's plan: where each of the engine's weights `names` comes from."""
        from trtrefit.worker.backends.tensorrt.plan import plan_engine
        from trtrefit.worker.backends.tensorrt.record import engine_record

        record = engine_record(self.record, self.entry.name, set(names))
        return plan_engine(names, self.entry.weight_name_map(), record, self.specs, self.eps)


def refit_once(
    p: Prepared,
    *,
    only: int | None = None,
    context_first: bool = False,
    refitter: Any = None,
    engine: Any = None,
    profile: bool = False,
    state: dict[str, Any] | None = None,
    blob: bytes | None = None,
) -> dict[str, Any]:
    from trtrefit.worker.backends.tensorrt.backend import set_planned_weights

    trt = p.trt
    row: dict[str, Any] = {}
    if engine is None:
        t = time.perf_counter()
        engine = trt.Runtime(p.logger).deserialize_cuda_engine(blob or p.blob)
        row["deserialize_s"] = time.perf_counter() - t
    if context_first:
        t = time.perf_counter()
        context = engine.create_execution_context()
        row["context_s"] = time.perf_counter() - t
    if refitter is None:
        refitter = trt.Refitter(engine, p.logger)
    names = list(refitter.get_all_weights())
    plan = p.plan(names)
    chosen = names if only is None else sorted(names, key=lambda n: "KERNEL" not in n)[:only]
    t = time.perf_counter()
    keep = set_planned_weights(trt, refitter, chosen, plan, state or p.state)
    row["set_weights_s"] = time.perf_counter() - t
    row["weights_set"] = len(chosen)
    row["weights_total"] = len(names)
    row["missing_reported"] = len(list(refitter.get_missing_weights()))
    cpu0 = _cpu()
    t0 = time.perf_counter()
    ok, prof = _timed_refit(refitter, profile)
    wall = time.perf_counter() - t0
    cpu1 = _cpu()
    row.update(refit_s=wall, ok=bool(ok), cpu_user_s=cpu1[0] - cpu0[0], cpu_sys_s=cpu1[1] - cpu0[1])
    if prof is not None:
        row["profile"] = _profile_summary(prof)
    row["_refitter"], row["_engine"], row["_keep"] = refitter, engine, keep
    if context_first:
        del context
    return row


def _timed_refit(refitter: Any, profile: bool) -> tuple[bool, Any]:
    """`refit_cuda_engine`, under PyTorch's profiler (CUDA activity) when asked."""
    import torch

    if not profile:
        ok = refitter.refit_cuda_engine()
        torch.cuda.synchronize()
        return bool(ok), None
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        ok = refitter.refit_cuda_engine()
        torch.cuda.synchronize()
    return bool(ok), prof


def _profile_summary(prof: Any) -> dict[str, Any]:
    events = prof.events()
    device = [
        e for e in events if getattr(e, "device_type", None) is not None and "CUDA" in str(e.device_type)
    ]
    total_device_us = sum(getattr(e, "device_time_total", 0) or 0 for e in device)
    table = prof.key_averages().table(
        sort_by="self_device_time_total", row_limit=15, max_name_column_width=60
    )
    return {
        "cuda_events": len(device),
        "cuda_time_total_s": total_device_us / 1e6,
        "table": table.splitlines(),
    }


def clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if not k.startswith("_")}


def anatomy(name: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    t = time.perf_counter()
    p = Prepared(name, root, args.batch)
    report: dict[str, Any] = {
        "prepare_s": round(time.perf_counter() - t, 2),
        "weights_mb": round(p.weights_mb, 1),
        "engine_mb": round(len(p.blob) / 1e6, 1),
    }
    first = refit_once(p)
    report["first"] = clean(first)
    print(f"[anatomy] {name} first: {first['refit_s']:.3f}s", file=sys.stderr, flush=True)
    if args.only_first:
        return report
    second = refit_once(p, refitter=first["_refitter"], engine=first["_engine"])
    report["second"] = clean(second)
    del first, second
    report["one"] = clean(refit_once(p, only=1))
    report["context_first"] = clean(refit_once(p, context_first=True))
    if args.profile:
        try:
            report["profiled"] = clean(refit_once(p, profile=True))
        except Exception as exc:
            report["profiled"] = {"error": f"{type(exc).__name__}: {exc}"}
    for key in ("second", "one", "context_first", "profiled"):
        value = report.get(key, {}).get("refit_s")
        print(f"[anatomy] {name} {key}: {value}", file=sys.stderr, flush=True)
    return report


def persistence(name: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Is the cost of a first refit paid once per engine *file*? Refit with checkpoint 1 (priming), then
    with checkpoint 2: on the same Refitter, on the primed engine re-deserialized, and on the original
    engine; the serialized results' digests show whether they are the same engine."""
    import hashlib

    from trtrefit.worker.backends.tensorrt.backend import serialize_engine
    from trtrefit.worker.formats import load_checkpoint
    from trtrefit.worker.samples import write_checkpoint

    p = Prepared(name, root, args.batch)
    write_checkpoint(MODELS[name], 2, "jitter", root / "new2.safetensors")
    state2 = load_checkpoint(root / "new2.safetensors", "checkpoint").state
    report: dict[str, Any] = {}
    digests: dict[str, str] = {}
    first = refit_once(p)
    report["prime_with_1"] = clean(first)
    primed = serialize_engine(p.trt, first["_engine"])
    (root / "primed.engine").write_bytes(primed)
    same = refit_once(p, refitter=first["_refitter"], engine=first["_engine"], state=state2)
    report["same_refitter_2"] = clean(same)
    digests["same_refitter_2"] = hashlib.sha256(serialize_engine(p.trt, same["_engine"])).hexdigest()[:16]
    del first, same
    again = refit_once(p, blob=primed, state=state2)
    report["primed_engine_2"] = clean(again)
    digests["primed_engine_2"] = hashlib.sha256(serialize_engine(p.trt, again["_engine"])).hexdigest()[:16]
    del again
    fresh = refit_once(p, state=state2)
    report["original_engine_2"] = clean(fresh)
    digests["original_engine_2"] = hashlib.sha256(serialize_engine(p.trt, fresh["_engine"])).hexdigest()[:16]
    report["digests"] = digests
    for key in ("prime_with_1", "same_refitter_2", "primed_engine_2", "original_engine_2"):
        print(f"[persist] {name} {key}: {report[key]['refit_s']}", file=sys.stderr, flush=True)
    return report


def from_primed(name: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """In a new process: refit the primed engine file `persistence` wrote with checkpoint 2."""
    import hashlib

    from trtrefit.worker.backends.tensorrt.backend import serialize_engine
    from trtrefit.worker.formats import load_checkpoint

    p = Prepared(name, root, args.batch)
    state2 = load_checkpoint(root / "new2.safetensors", "checkpoint").state
    row = refit_once(p, blob=(root / "primed.engine").read_bytes(), state=state2)
    report: dict[str, Any] = {"primed_file_2": clean(row)}
    report["digest"] = hashlib.sha256(serialize_engine(p.trt, row["_engine"])).hexdigest()[:16]
    print(f"[persist] {name} primed file, new process: {row['refit_s']}", file=sys.stderr, flush=True)
    return report


def _context_with_cache(engine: Any, cache_blob: bytes | None, shared: Any = None) -> dict[str, Any]:
    """An execution context created through an IRuntimeConfig carrying a runtime cache (TensorRT-RTX):
    `shared` when given, else a new cache filled from `cache_blob` (or empty)."""
    row: dict[str, Any] = {}
    config = engine.create_runtime_config()
    cache = shared if shared is not None else config.create_runtime_cache()
    if shared is None and cache_blob is not None:
        row["cache_loaded"] = bool(cache.deserialize(cache_blob))
    row["cache_set"] = bool(config.set_runtime_cache(cache))
    t = time.perf_counter()
    try:
        row["_context"] = engine.create_execution_context(config)
    except TypeError:  # the bindings' overloads differ between versions
        row["_context"] = engine.create_execution_context(runtime_config=config)
    row["context_s"] = time.perf_counter() - t
    row["_cache"], row["_config"] = cache, config
    return row


def runtime_cache(name: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Does TensorRT-RTX's runtime cache (JIT kernels, attached through an execution context's
    IRuntimeConfig) carry the first refit's work? First engine: context with an empty cache, refit; second
    engine in the same process: context with the same cache, refit; --mode runtime-cache-load repeats the
    second in a new process from the serialized cache."""
    p = Prepared(name, root, args.batch)
    report: dict[str, Any] = {}
    if args.mode == "runtime-cache":
        engine = p.trt.Runtime(p.logger).deserialize_cuda_engine(p.blob)
        first = _context_with_cache(engine, None)
        report["empty_cache"] = clean(first)
        report["empty_cache"].update(clean(refit_once(p, engine=engine)))
        blob = bytes(first["_cache"].serialize())
        (root / "runtime.cache").write_bytes(blob)
        report["cache_bytes"] = len(blob)
        engine2 = p.trt.Runtime(p.logger).deserialize_cuda_engine(p.blob)
        second = _context_with_cache(engine2, None, shared=first["_cache"])
        report["same_cache_object"] = clean(second)
        report["same_cache_object"].update(clean(refit_once(p, engine=engine2)))
    else:
        blob = (root / "runtime.cache").read_bytes()
        engine = p.trt.Runtime(p.logger).deserialize_cuda_engine(p.blob)
        loaded = _context_with_cache(engine, blob)
        report["cache_from_file"] = clean(loaded)
        report["cache_from_file"].update(clean(refit_once(p, engine=engine)))
    for key in ("empty_cache", "same_cache_object", "cache_from_file"):
        if key in report:
            row = report[key]
            print(
                f"[cache] {name} {key}: context {row.get('context_s')} refit {row.get('refit_s')}",
                file=sys.stderr,
            )
    return report


def _run_engine(trt: Any, engine: Any, inputs: list[Any]) -> list[Any]:
    """The engine's outputs for `inputs` (static shapes, inputs in binding order)."""
    import torch

    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    feed = iter(inputs)
    outputs = []
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            tensor = next(feed).contiguous()
        else:
            tensor = torch.empty(tuple(engine.get_tensor_shape(name)), device="cuda")
            outputs.append(tensor)
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.current_stream()
    context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return [o.cpu() for o in outputs]


def split_refit(name: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One engine, its weights in K contiguous parts, a Refitter per part: refit the parts one after
    another, then from K threads at once; compare with one Refitter given every weight."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from trtrefit.worker.backends.tensorrt.backend import serialize_engine, set_planned_weights

    p = Prepared(name, root, args.batch)
    trt = p.trt
    inputs = [
        torch.randn(args.batch, 3, 224, 224, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    ]

    def digest(engine: Any) -> str:
        return hashlib.sha256(serialize_engine(trt, engine)).hexdigest()[:16]

    full = refit_once(p)
    report: dict[str, Any] = {"full": clean(full), "full_digest": digest(full["_engine"])}
    expected = _run_engine(trt, full["_engine"], inputs)
    del full
    for parts in [int(k) for k in args.parts.split(",")]:
        for how in ("sequential", "threads"):
            engine = trt.Runtime(p.logger).deserialize_cuda_engine(p.blob)
            refitters = [trt.Refitter(engine, p.logger) for _ in range(parts)]
            names = list(refitters[0].get_all_weights())
            plan = p.plan(names)
            size = -(-len(names) // parts)
            chunks = [names[i : i + size] for i in range(0, len(names), size)]
            refitters = refitters[: len(chunks)]
            keep = [
                set_planned_weights(trt, r, c, plan, p.state) for r, c in zip(refitters, chunks, strict=True)
            ]
            for refitter in refitters:  # each part grows to the weights refitted with it
                while missing := list(refitter.get_missing_weights()):
                    keep.append(set_planned_weights(trt, refitter, missing, plan, p.state))
            row: dict[str, Any] = {"parts": len(chunks)}
            cpu0 = _cpu()
            t0 = time.perf_counter()
            if how == "sequential":
                oks = [bool(r.refit_cuda_engine()) for r in refitters]
            else:
                with ThreadPoolExecutor(len(chunks)) as pool:
                    oks = [bool(ok) for ok in pool.map(lambda r: r.refit_cuda_engine(), refitters)]
            torch.cuda.synchronize()
            row["refit_s"] = time.perf_counter() - t0
            cpu1 = _cpu()
            row.update(ok=all(oks), cpu_user_s=cpu1[0] - cpu0[0], cpu_sys_s=cpu1[1] - cpu0[1])
            row["digest"] = digest(engine)
            got = _run_engine(trt, engine, inputs)
            row["max_abs_vs_full"] = max(
                float((g - e).abs().max()) for g, e in zip(got, expected, strict=True)
            )
            report[f"{how}_{parts}"] = clean(row)
            print(f"[split] {name} {how} x{parts}: {clean(row)}", file=sys.stderr, flush=True)
            del keep, refitters, engine
    return report


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--only-first", action="store_true", help="just the `first` refit (for a sampler)")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument(
        "--mode",
        choices=("anatomy", "persist", "from-primed", "split", "runtime-cache", "runtime-cache-load"),
        default="anatomy",
        help="persist: is a first refit's cost paid once per engine file? from-primed: its second half, "
        "in a new process (same --workdir); runtime-cache(-load): does TensorRT-RTX's runtime cache keep it?",
    )
    parser.add_argument("--parts", default="2,4,16", help="--mode split: into how many parts")
    parser.add_argument("--workdir", type=Path, help="keep bundles here (reused when present)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from trtrefit.worker.backends.tensorrt.backend import versions

    run = {
        "anatomy": anatomy,
        "persist": persistence,
        "from-primed": from_primed,
        "split": split_refit,
        "runtime-cache": runtime_cache,
        "runtime-cache-load": runtime_cache,
    }[args.mode]
    result: dict[str, Any] = {
        "command": " ".join(["python3", *sys.argv]),
        "versions": versions(),
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="trt-anatomy-") as tmp:
        base = args.workdir or Path(tmp)
        for name in [m for m in args.models.split(",") if m]:
            result["models"][name] = run(name, base / name, args)
            target = args.out / f"trt_refit_{args.mode.replace('-', '_')}.json"
            target.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

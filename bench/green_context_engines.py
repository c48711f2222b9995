"""Can TensorRT-RTX run an engine on a CUDA green context's SMs? The question behind `--refit-sms`
(serving/partition.py): only if it can, the standby copy's refit and verification can leave the SMs that
serve.

A resnet50 b8 engine (Myelin fuses its convolutions through cuDNN graphs) runs on the `--refit-sms` green
context's stream in four ways, each on a fresh copy of the program, and is compared with a copy on the
whole GPU, bit for bit and by the largest difference:

  green_stream_primary_current   the primary context current (the first version of --refit-sms, ad243b9)
  green_stream_green_current     the green context made current while TensorRT runs
  created_in_green               the engines deserialized and their execution contexts created with the
                                 green context current, and run with it current
  second_context_in_green        a whole-GPU copy's engine given a second execution context, created and
                                 run with the green context current (one execution context per role)

then refitted: a copy created in the green context is refitted to a checkpoint there and compared with a
whole-GPU copy refitted to the same checkpoint. Last, the whole-GPU reference runs once more, to show the
probes left it intact. Prints RESULT {...}; writes green_context_engines.json to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MODEL = "trtrefit.worker.samples:resnet50"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--refit-sms", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # TensorRT's own errors reach the output

    import torch

    from trtrefit.serving import streams
    from trtrefit.worker.compile import CompileRequest, compile_bundle
    from trtrefit.worker.samples import write_checkpoint

    started = time.perf_counter()
    compile_bundle(
        CompileRequest(output=args.workdir, shapes=[(8, 3, 224, 224)], backend="tensorrt", model=MODEL)
    )
    write_checkpoint(MODEL, 11, "jitter", args.workdir / "A.safetensors")
    result: dict[str, Any] = {
        "benchmark": "green_context_engines",
        "commit": args.commit,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python3 bench/green_context_engines.py " + " ".join(sys.argv[1:]),
        "versions": versions(),
        "n": {"runs_per_case": 1, "batch": 8},
        "settings": {"model": "resnet50"},
        "compile_s": round(time.perf_counter() - started, 1),
    }
    probe = Probe(args.workdir, args.refit_sms)
    result["sms"] = {"green_context": probe.partition.refit_sms, "total": probe.partition.total_sms}
    result["cases"] = probe.cases()
    result["whole_gpu_reference_intact"] = probe.reference_intact()
    streams.use_partition("cuda", None)
    torch.cuda.synchronize()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "green_context_engines.json").write_text(json.dumps(result, indent=2) + "\n")
    print("RESULT " + json.dumps(result), flush=True)
    return 0


class Probe:
    def __init__(self, root: Path, refit_sms: int) -> None:
        import torch

        from trtrefit.serving import streams

        self.root = root
        self.inputs = [torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0)).cuda()]
        self.expected = self.run(self.copy())
        partition = streams.use_partition("cuda", refit_sms)
        assert partition is not None
        self.partition = partition
        self.green = partition.refit  # the green context's stream

    def copy(self) -> Any:
        from trtrefit.serving.tensorrt import TensorRTLive

        return TensorRTLive(self.root / "engine.ep", "probe", None, "cuda")

    def run(self, live: Any) -> list[Any]:
        import torch

        outputs = [t.clone() for t in live.infer(self.inputs)]
        torch.cuda.synchronize()
        return outputs

    @contextmanager
    def green_current(self) -> Iterator[None]:
        """The green context made current on this thread (cuCtxFromGreenCtx + push)."""
        from cuda.bindings import driver

        from trtrefit.serving.partition import _check

        context = _check(driver.cuCtxFromGreenCtx(self.partition.context), "cuCtxFromGreenCtx")
        _check(driver.cuCtxPushCurrent(context), "cuCtxPushCurrent")
        try:
            yield
        finally:
            _check(driver.cuCtxPopCurrent(), "cuCtxPopCurrent")

    def cases(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "green_stream_primary_current": self.case(self.green_stream_primary_current, self.expected),
            "green_stream_green_current": self.case(self.green_stream_green_current, self.expected),
            "created_in_green": self.case(self.created_in_green, self.expected),
        }
        whole = self.copy()
        whole.apply(whole.stage(self.checkpoint()))
        refitted = self.run(whole)
        found["refit_changes_the_whole_gpu_outputs"] = not same(refitted, self.expected)
        found["created_in_green_refitted"] = self.case(self.created_in_green_refitted, refitted)
        found["second_context_in_green"] = self.case(self.second_context_in_green, self.expected)
        return found

    def reference_intact(self) -> bool:
        return same(self.run(self.copy()), self.expected)

    def case(self, run: Callable[[], list[Any]], against: list[Any]) -> dict[str, Any]:
        try:
            outputs = run()
            found: dict[str, Any] = {
                "ran": True,
                "bitwise": same(outputs, against),
                "max_abs_diff": max(
                    float((a.double() - b.double()).abs().max())
                    for a, b in zip(outputs, against, strict=True)
                ),
                "max_abs_output": max(float(b.abs().max()) for b in against),
            }
        except Exception as exc:  # a probe: every failure is its finding
            traceback.print_exc()
            found = {"ran": False, "error": f"{type(exc).__name__}: {exc}"[:600]}
        print(f"CASE {run.__name__}: {json.dumps(found)}", flush=True)
        return found

    def green_stream_primary_current(self) -> list[Any]:
        live = self.copy()
        live.run_on(self.green)
        return self.run(live)

    def green_stream_green_current(self) -> list[Any]:
        live = self.copy()
        live.run_on(self.green)
        with self.green_current():
            return self.run(live)

    def created_in_green(self) -> list[Any]:
        with self.green_current():
            live = self.copy()
            live.run_on(self.green)
            return self.run(live)

    def created_in_green_refitted(self) -> list[Any]:
        with self.green_current():
            live = self.copy()
            live.run_on(self.green)
            live.apply(live.stage(self.checkpoint()))
            return self.run(live)

    def second_context_in_green(self) -> list[Any]:
        live = self.copy()
        module = live._engines[0].module
        with self.green_current():
            module.context = module.engine.create_execution_context()
            live.run_on(self.green)
            return self.run(live)

    def checkpoint(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        return {k: v.cuda() for k, v in load_file(str(self.root / "A.safetensors")).items()}


def same(a: list[Any], b: list[Any]) -> bool:
    import torch

    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def versions() -> dict[str, str]:
    import torch

    found = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}
    try:
        import tensorrt

        found["tensorrt"] = str(tensorrt.__version__)
    except ImportError:
        pass
    return found


if __name__ == "__main__":
    sys.exit(main())

"""Loading an artifact never runs code from it: hostile torch.export archives (a real program rewritten so
that loading it runs a payload creating a marker file) are refused in every role, before torch sees them,
with one line naming the file and the member; our own archives pass.

Each poison is first shown to work on plain `torch.export.load` (the marker appears), so a refusal below
is a refusal of something real."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.worker import poisoned
from tests.worker.conftest import Bundle
from trtrefit.api.result import Outcome, RefitResult
from trtrefit.worker.__main__ import main
from trtrefit.worker.archive_guard import check_archive
from trtrefit.worker.errors import WorkerError
from trtrefit.worker.programs import load_program, quiet_torch, save_program

ENGINE_CLASS = "__torch__.torch.classes.tensorrt.Engine"
TOLERANCES = ["--rtol", "1e-4", "--atol", "1e-4", "--min-cosine-similarity", "0.9999"]

Poison = Callable[[Path, Path, Path], Path]  # (clean program, target, marker) -> target


def _sympy(source: Path, target: Path, marker: Path) -> Path:
    code = f"__import__('builtins').open({str(marker)!r}, 'w').close() or Symbol('s0')"
    return poisoned.evaluated_text(source, target, "expr_str", code)


def _guards(source: Path, target: Path, marker: Path) -> Path:
    return poisoned.evaluated_text(
        source, target, "guards_code", [f"open({str(marker)!r}, 'w').close() is None"]
    )


# name: (poison, the member the refusal names, words of the reason)
POISONS: dict[str, tuple[Poison, str, str]] = {
    "pickled weight": (poisoned.pickled_weight, "data/weights/weight_0", "is pickled (use_pickle"),
    "pickled constant": (poisoned.pickled_constant, "data/constants/tensor_99", "constant 'evil' is pickled"),
    "pickled example inputs": (
        poisoned.pickled_sample_inputs,
        "data/sample_inputs/model.pt",
        "example inputs weights_only=True cannot read (Unsupported global: GLOBAL exec",
    ),
    "legacy weights file": (poisoned.legacy_weights, "data/weights/model.pt", "legacy pickled layout"),
    "legacy zip": (poisoned.legacy_zip, "serialized_state_dict.pt", "legacy pickled layout"),
    "sympy expression": (_sympy, "models/model.json", "uses '__import__'"),
    "guards code": (_guards, "models/model.json", 'guard "open('),
}


@pytest.fixture(scope="module")
def dynamic_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A program with a dynamic batch, so its JSON holds symbolic expressions (what the sympy poison
    rewrites) and a weight, a buffer and example inputs."""
    import torch

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)
            self.register_buffer("shift", torch.ones(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.linear(x) + self.shift
            return out

    path = tmp_path_factory.mktemp("dynamic") / "dynamic.pt2"
    batch = torch.export.Dim("batch", min=2, max=64)
    with quiet_torch():
        program = torch.export.export(Model(), (torch.randn(4, 3),), dynamic_shapes=({0: batch},))
    save_program(program, path)
    return path


@pytest.fixture(autouse=True)
def _quiet_torch_logs() -> Iterator[None]:
    """torch logs a warning for each fallback the poisons trigger; noise, not what is tested."""
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("name", POISONS)
def test_each_poison_runs_its_payload_on_plain_torch(
    name: str, dynamic_program: Path, tmp_path: Path
) -> None:
    import torch

    poison, _, _ = POISONS[name]
    marker = tmp_path / "marker"
    archive = poison(dynamic_program, tmp_path / "poisoned.pt2", marker)
    try:
        with quiet_torch():
            torch.export.load(str(archive)).module()(torch.randn(4, 3))
    except Exception:  # what torch does after running the payload does not matter here
        pass
    assert marker.exists()


@pytest.mark.parametrize("name", POISONS)
def test_each_poison_is_refused_naming_the_file_and_the_member(
    name: str, dynamic_program: Path, tmp_path: Path
) -> None:
    poison, member, reason = POISONS[name]
    marker = tmp_path / "marker"
    archive = poison(dynamic_program, tmp_path / "poisoned.pt2", marker)
    with pytest.raises(WorkerError) as caught:
        load_program(archive, "source s3://b/poisoned.pt2")
    message = caught.value.message
    assert message.startswith(f"source s3://b/poisoned.pt2: refusing to load: {member}: ")
    assert reason in message
    assert "\n" not in message
    assert not marker.exists()


# -- every role of `trtrefit refit` and `trtrefit compile --program` -------------------------------------


def _refit(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, RefitResult]:
    code = main(["refit", *args, *TOLERANCES, "--termination-log", "/nonexistent/termination-log"])
    out, _ = capsys.readouterr()
    return code, RefitResult.from_json(out.strip().splitlines()[-1])


@pytest.mark.parametrize("role", ["engine", "source", "checkpoint"])
def test_refit_refuses_a_poisoned_archive_in_every_role_and_publishes_nothing(
    role: str, capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    clean = {"engine": bundle.engine, "source": bundle.source, "checkpoint": bundle.program_checkpoint}
    files = dict(clean)
    marker = tmp_path / "marker"
    files[role] = poisoned.pickled_weight(clean[role], tmp_path / f"poisoned{clean[role].suffix}", marker)
    uris = {r: f"file://{path}" for r, path in files.items()}
    publish = tmp_path / "out"
    code, result = _refit(
        capsys,
        [f"--{r}={uri}" for r, uri in uris.items()]
        + ["--inputs", f"file://{bundle.inputs}", "--publish", f"file://{publish}"],
    )
    assert code == 1
    assert result.outcome is Outcome.ERROR
    assert result.message.startswith(
        f"{role} {uris[role]}: refusing to load: data/weights/weight_0: weight '"
    )
    assert result.message.endswith("is pickled (use_pickle; torch unpickles it unrestricted)")
    assert not marker.exists()
    assert not publish.exists()


def test_compile_refuses_a_poisoned_program(
    capsys: pytest.CaptureFixture[str], bundle: Bundle, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    program = poisoned.pickled_weight(bundle.source, tmp_path / "poisoned.pt2", marker)
    out = tmp_path / "bundle"
    code = main(["compile", "--program", str(program), "--input-shape", "4,3,32,32", "--output", str(out)])
    assert code == 1
    assert f"--program {program}: refusing to load: data/weights/weight_0" in capsys.readouterr().err
    assert not marker.exists()
    assert not (out / "engine.ep").exists()


# -- custom objects, compiled code, pytree specs ---------------------------------------------------------


def test_a_custom_object_of_another_class_is_refused(dynamic_program: Path, tmp_path: Path) -> None:
    archive = poisoned.custom_object(
        dynamic_program, tmp_path / "p.pt2", "__torch__.torch.classes._TorchScriptTesting._Foo", ["x"]
    )
    with pytest.raises(WorkerError) as caught:
        check_archive(archive, "engine e.ep")
    assert caught.value.message == (
        "engine e.ep: refusing to load: data/constants/custom_obj_0: custom object 'obj' is "
        "__torch__.torch.classes._TorchScriptTesting._Foo; only torch.classes.tensorrt.Engine is accepted"
    )


def test_an_engine_object_naming_anything_else_is_refused(dynamic_program: Path, tmp_path: Path) -> None:
    engine = b"\x80\x02c__torch__.torch.classes.tensorrt\nEngine\n)\x81"
    body = engine + b"cposix\nsystem\nX\x04\x00\x00\x00trueq\x00\x85Rb."  # state = os.system("true")
    archive = poisoned.custom_object_raw(dynamic_program, tmp_path / "p.pt2", body)
    with pytest.raises(WorkerError, match=r"custom_obj_0: custom object 'obj' refers to posix\.system$"):
        check_archive(archive, "engine e.ep")


def test_a_tensorrt_engine_object_passes(dynamic_program: Path, tmp_path: Path) -> None:
    """What torch_tensorrt stores (and tensorrt.package writes): the Engine class with a list of strings.
    Loading it needs torch_tensorrt; the guard itself does not."""
    archive = poisoned.custom_object(
        dynamic_program, tmp_path / "e.pt2", ENGINE_CLASS, ["abi", "name", "dev", "ZW5n"]
    )
    check_archive(archive, "engine e.ep")


def test_aot_inductor_code_is_refused(dynamic_program: Path, tmp_path: Path) -> None:
    archive = poisoned.rewrite(
        dynamic_program, tmp_path / "p.pt2", replace={"data/aotinductor/model/m.so": b"\x7fELF"}
    )
    with pytest.raises(
        WorkerError, match=r"refusing to load: data/aotinductor/model/m\.so: AOTInductor compiled code"
    ):
        check_archive(archive, "engine e.ep")


def test_a_pytree_spec_naming_an_enum_is_refused(dynamic_program: Path, tmp_path: Path) -> None:
    import json

    context = json.dumps([{"__enum__": True, "fqn": "antigravity:Thing", "name": "x"}])
    spec = json.dumps([1, {"type": "builtins.dict", "context": context, "children_spec": []}])
    archive = poisoned.evaluated_text(dynamic_program, tmp_path / "p.pt2", "in_spec", spec)
    with pytest.raises(WorkerError, match=r"models/model\.json: pytree spec names an Enum"):
        check_archive(archive, "source s.pt2")


def test_a_file_that_is_no_archive_is_still_the_plain_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt2"
    path.write_text("hello")
    with pytest.raises(WorkerError, match=r"^source notes\.pt2: not a loadable torch\.export program: "):
        load_program(path, "source notes.pt2")


# -- our own archives pass --------------------------------------------------------------------------------


def test_every_archive_compile_writes_passes(bundle: Bundle) -> None:
    for path in (bundle.engine, bundle.source, bundle.program_checkpoint):
        check_archive(path, str(path))
        assert load_program(path, str(path)).state_dict


def test_a_program_with_dynamic_shapes_and_guards_passes(tmp_path: Path) -> None:
    """torch writes symbolic expressions and guards_code for dynamic shapes; both are in the grammar."""
    import json

    import torch

    class Reshape(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0] // 2, -1, x.shape[1]).sum(1)

    batch = torch.export.Dim("batch", min=2, max=512)
    with quiet_torch():
        program = torch.export.export(Reshape(), (torch.randn(8, 3),), dynamic_shapes=({0: 2 * batch},))
    save_program(program, tmp_path / "r.pt2")
    with zipfile.ZipFile(tmp_path / "r.pt2") as archive:
        document = json.loads(
            archive.read(next(n for n in archive.namelist() if n.endswith("models/model.json")))
        )
    assert document["guards_code"], "the program should carry guards for this test to mean anything"
    loaded = load_program(tmp_path / "r.pt2", "r")
    assert loaded.module()(torch.randn(6, 3)).shape == (3, 3)


def test_a_pickled_state_dict_checkpoint_runs_nothing(tmp_path: Path) -> None:
    """`.pt` checkpoints go through torch.load(weights_only=True) only."""
    from trtrefit.worker.formats import load_checkpoint

    marker = tmp_path / "marker"
    path = tmp_path / "step-9.pt"
    path.write_bytes(poisoned.pickled({"fc.weight": poisoned.Payload(marker)}))
    with pytest.raises(
        WorkerError, match=r"^checkpoint s3://b/step-9\.pt: not loadable with torch\.load\(weights_only"
    ):
        load_checkpoint(path, "s3://b/step-9.pt")
    assert not marker.exists()

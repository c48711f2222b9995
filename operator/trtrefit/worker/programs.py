"""torch.export programs: load, save, swap weights, move to a device, run. The one place that knows the
ExportedProgram API details the exported backend, the reference run and `trtrefit compile` share."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from trtrefit.worker.errors import WorkerError

if TYPE_CHECKING:
    import torch
    from torch.export import ExportedProgram


@contextmanager
def quiet_torch() -> Iterator[None]:
    """Silence warnings torch raises about its own internals while loading and lowering programs
    (read-only archive buffers, deprecated pytree helpers): nothing a user of the worker can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*treespec.*", category=FutureWarning)
        yield


def load_program(path: Path, label: str) -> ExportedProgram:
    """torch.export.load with one clear error line naming `label` (the URI) when it is not a program.

    Every role loads archives through here (engine, source, checkpoint, `compile --program`, the server),
    so the archive is inspected first: anything torch would unpickle or evaluate is refused unloaded.
    """
    import torch

    from trtrefit.worker.archive_guard import check_archive

    check_archive(path, label)
    try:
        # An open file, not a name: torch.export.load complains about any suffix but .pt2 (.ep included).
        with quiet_torch(), path.open("rb") as handle:
            return torch.export.load(handle)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise WorkerError.from_exc(f"{label}: not a loadable torch.export program", exc) from exc


def save_program(program: ExportedProgram, path: Path, extra_files: Mapping[str, str] | None = None) -> None:
    """torch.export.save; the archive goes through a `.pt2` name (torch warns about any other suffix)."""
    import torch

    staging = path if path.suffix == ".pt2" else path.with_name(f".{path.name}.staging.pt2")
    with quiet_torch():
        torch.export.save(program, str(staging), extra_files=dict(extra_files) if extra_files else None)
    if staging != path:
        staging.replace(path)


def read_extra_file(path: Path, name: str) -> str | None:
    """An extra file stored in a pt2 archive (`torch.export.save(..., extra_files=...)`), read without
    loading the program; None when absent or when the file is not an archive."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith(f"/extra/{name}"):
                    return archive.read(member).decode()
    except zipfile.BadZipFile:
        return None
    return None


def weights_of(program: ExportedProgram) -> dict[str, torch.Tensor]:
    """The program's parameters and persistent buffers by their module path (what a checkpoint holds)."""
    return dict(program.state_dict.items())


def swap_weights(program: ExportedProgram, state: Mapping[str, torch.Tensor]) -> None:
    """Replace the program's parameters and buffers in place with `state` (names already checked).

    Each new tensor takes the old one's device and dtype; parameters stay parameters.
    """
    import torch

    for name, old in list(program.state_dict.items()):
        new = state[name].detach().to(device=old.device, dtype=old.dtype)
        if isinstance(old, torch.nn.Parameter):
            program.state_dict[name] = torch.nn.Parameter(new, requires_grad=old.requires_grad)
        else:
            program.state_dict[name] = new


def to_device(program: ExportedProgram, device: str) -> ExportedProgram:
    """The program with its weights and device-bound nodes moved to `device` (a copy when moved)."""
    import torch
    from torch.export.passes import move_to_device_pass

    weights = list(program.state_dict.values())
    if weights and all(w.device == torch.device(device) for w in weights):
        return program
    with quiet_torch():
        return move_to_device_pass(program, device)


def run(program: ExportedProgram, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Call the program on positional inputs; outputs flattened to a list of tensors."""
    import torch
    from torch.utils import _pytree

    with torch.inference_mode(), quiet_torch():
        result = program.module()(*inputs)
    leaves = _pytree.tree_leaves(result)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]

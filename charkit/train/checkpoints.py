"""Crash-safe checkpoints: ``<run>/checkpoints/step-XXXXXX/``.

A checkpoint folder holds

    lora.safetensors       the LoRA weights (diffusers/peft layout: loads with ``pipe.load_lora_weights``)
    optimizer.safetensors  optimizer tensors (Adam moments), flattened
    rng.safetensors        torch CPU / CUDA generator states
    state.json             optimizer param groups and scalars, LR-scheduler and grad-scaler state,
                           Python / NumPy RNG state, loss history
    manifest.json          written last: step, and the size + sha256 of every file above

It is built in a hidden ``.step-XXXXXX.tmp-<pid>`` folder and renamed into place only when complete,
so ``kill -9`` during a save leaves the previous checkpoint as the newest complete one.
:func:`list_checkpoints` trusts a folder only when its manifest exists and every file matches its
hash. Nothing is pickled: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .. import __version__
from ..errors import CharkitError
from ..paths import atomic_write_bytes, atomic_write_json, fsync_dir, sha256_file

CHECKPOINTS_DIR = "checkpoints"
MANIFEST = "manifest.json"
FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


@dataclass
class RngState:
    """Every global random generator training touches (LoRA dropout draws from torch's)."""

    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor]
    python: list
    numpy: list

    @classmethod
    def capture(cls) -> RngState:
        np_state = np.random.get_state()
        return cls(
            torch_cpu=torch.get_rng_state(),
            torch_cuda=[s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
            python=_jsonable(random.getstate()),
            numpy=[np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        )

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda and torch.cuda.is_available() and len(self.torch_cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(self.torch_cuda)
        random.setstate(_tuples(self.python))
        n = self.numpy
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))


@dataclass
class CheckpointState:
    """What a checkpoint holds, in memory."""

    step: int
    lora: dict[str, torch.Tensor]
    lora_metadata: dict[str, str]
    optimizer: dict
    lr_scheduler: dict
    scaler: dict | None
    rng: RngState
    losses: list[list[float]] = field(default_factory=list)  # [[step, loss], ...]
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete, verified checkpoint folder."""

    step: int
    path: Path
    manifest: dict

    @property
    def lora_file(self) -> Path:
        return self.path / "lora.safetensors"


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def step_name(step: int) -> str:
    return f"step-{step:06d}"


# ---------------------------------------------------------------------------------- optimizer flattening


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, st in state_dict["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[k] = _jsonable(v)
    return tensors, {"param_groups": _jsonable(state_dict["param_groups"]), "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for pid, d in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(d)
    return {"state": state, "param_groups": meta["param_groups"]}


def _jsonable(v):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, (np.generic,)):
        return v.item()
    return v


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


# ------------------------------------------------------------------------------------------- disk space


def estimate_bytes(state: CheckpointState) -> int:
    """Bytes a checkpoint of ``state`` takes on disk (tensors plus a margin for headers and JSON)."""
    n = sum(t.numel() * t.element_size() for t in state.lora.values())
    n += sum(t.numel() * t.element_size() for t in flatten_optimizer(state.optimizer)[0].values())
    return int(n * 1.05) + 256 * 1024


def ensure_free_space(
    folder: str | os.PathLike, need_bytes: int, *, reserve_bytes: int = 0, what: str = "checkpoint"
) -> None:
    """Refuse to write ``need_bytes`` into ``folder`` when less than that plus the reserve is free."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    free = shutil.disk_usage(p).free
    if free < need_bytes + reserve_bytes:
        mb = lambda b: f"{b / 2**20:,.1f}"
        raise CharkitError(
            f"{folder}: not enough free disk to save the {what}: it needs about {mb(need_bytes)} MB plus the "
            f"{mb(reserve_bytes)} MB reserve (checkpoints.reserve_disk_mb), and {mb(free)} MB are free; free some space, "
            "lower checkpoints.reserve_disk_mb, or train with --out on another disk"
        )


# --------------------------------------------------------------------------------------------- save/load


def _all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


def save_checkpoint(run_dir: str | os.PathLike, state: CheckpointState, *, reserve_bytes: int = 0) -> CheckpointInfo:
    """Write ``state`` as ``checkpoints/step-XXXXXX/`` atomically (temporary folder, manifest last, rename).

    Refuses non-finite LoRA weights and a disk without room, before writing anything.
    """
    if not _all_finite(state.lora):
        raise CharkitError(
            f"step {state.step}: the LoRA weights are not finite (NaN/inf), so no checkpoint was saved; the training "
            "diverged: lower optimizer.learning_rate, or use mixed_precision 'bf16' instead of 'fp16'"
        )
    root = checkpoints_dir(run_dir)
    ensure_free_space(
        root, estimate_bytes(state), reserve_bytes=reserve_bytes, what=f"checkpoint {step_name(state.step)}"
    )
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(state.step)
    tmp = root / f".{step_name(state.step)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        opt_tensors, opt_meta = flatten_optimizer(state.optimizer)
        rng_tensors = {"torch_cpu": state.rng.torch_cpu.contiguous()}
        rng_tensors.update({f"torch_cuda.{i}": s.contiguous().cpu() for i, s in enumerate(state.rng.torch_cuda)})
        files = {
            "lora.safetensors": st_save(_contiguous(state.lora), metadata=state.lora_metadata),
            "optimizer.safetensors": st_save(opt_tensors) if opt_tensors else st_save({"empty": torch.zeros(0)}),
            "rng.safetensors": st_save(rng_tensors),
            "state.json": (
                json.dumps(
                    {
                        "step": state.step,
                        "optimizer": opt_meta,
                        "lr_scheduler": _jsonable(state.lr_scheduler),
                        "scaler": _jsonable(state.scaler),
                        "rng": {"python": state.rng.python, "numpy": state.rng.numpy},
                        "losses": state.losses,
                        "extra": state.extra,
                    },
                    allow_nan=True,
                )
                + "\n"
            ).encode(),
        }
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        manifest = {
            "format": FORMAT,
            "charkit_version": __version__,
            "step": state.step,
            "files": {name: {"bytes": len(data), "sha256": sha256_file(tmp / name)} for name, data in files.items()},
        }
        atomic_write_json(tmp / MANIFEST, manifest)  # last: its presence marks the folder complete
        if final.exists():  # a re-save of this step (e.g. after a resume): swap the old one out
            old = root / f".{step_name(state.step)}.old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CheckpointInfo(step=state.step, path=final, manifest=manifest)


def _contiguous(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in d.items()}


def verify_checkpoint(path: str | os.PathLike) -> CheckpointInfo | None:
    """The checkpoint in ``path`` if its manifest is there and every file matches it, else None."""
    path = Path(path)
    m = _STEP_DIR.match(path.name)
    if not m or not (path / MANIFEST).is_file():
        return None
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        for name, rec in manifest["files"].items():
            f = path / name
            if not f.is_file() or f.stat().st_size != rec["bytes"] or sha256_file(f) != rec["sha256"]:
                return None
        if int(manifest["step"]) != int(m.group(1)):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return CheckpointInfo(step=int(manifest["step"]), path=path, manifest=manifest)


def list_checkpoints(run_dir: str | os.PathLike) -> list[CheckpointInfo]:
    """Complete, verified checkpoints of a run, oldest first (incomplete and hidden folders ignored)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [verify_checkpoint(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return sorted((c for c in found if c is not None), key=lambda c: c.step)


def latest_checkpoint(run_dir: str | os.PathLike) -> CheckpointInfo | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def clean_incomplete(run_dir: str | os.PathLike) -> list[Path]:
    """Remove leftovers of interrupted saves (hidden temporary folders); returns what was removed."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    gone = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(".step-")]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def load_checkpoint(info: CheckpointInfo) -> CheckpointState:
    """Read a verified checkpoint back (safetensors + JSON only)."""
    p = info.path
    lora = st_load((p / "lora.safetensors").read_bytes())
    from safetensors import safe_open

    with safe_open(str(p / "lora.safetensors"), framework="pt") as f:
        meta = f.metadata() or {}
    opt_tensors = {k: v for k, v in st_load((p / "optimizer.safetensors").read_bytes()).items() if k != "empty"}
    rng_t = st_load((p / "rng.safetensors").read_bytes())
    st = json.loads((p / "state.json").read_text(encoding="utf-8"))
    cuda = [
        rng_t[k] for k in sorted((k for k in rng_t if k.startswith("torch_cuda.")), key=lambda k: int(k.split(".")[1]))
    ]
    return CheckpointState(
        step=int(st["step"]),
        lora=lora,
        lora_metadata=meta,
        optimizer=unflatten_optimizer(opt_tensors, st["optimizer"]),
        lr_scheduler=st["lr_scheduler"],
        scaler=st.get("scaler"),
        rng=RngState(
            torch_cpu=rng_t["torch_cpu"], torch_cuda=cuda, python=st["rng"]["python"], numpy=st["rng"]["numpy"]
        ),
        losses=st.get("losses", []),
        extra=st.get("extra", {}),
    )

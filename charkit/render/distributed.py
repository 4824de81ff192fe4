"""Several processes, one manifest: ``accelerate launch -m charkit render ...``.

Each process renders its share of the pending scenes (``split_between_processes``) and
records them in its own partial manifest ``DIR/.manifest.rank<N>.json`` (atomically, after
every scene). After ``wait_for_everyone`` the main process merges the old manifest and the
partials, in scene order, into one ``manifest.json`` and deletes the partials. A run killed
half way leaves partials behind; the next run merges them first, so finished scenes are kept.

On CPU, accelerate only splits work when the state is created with ``cpu=True``; without it
every rank silently renders everything (see docs/rendering.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .manifest import MANIFEST, PARTIAL_GLOB, ImageRecord, Manifest, read_records, update_manifest


def _launched() -> bool:
    # torchrun / accelerate launch set these; a plain `charkit render` needs no process group.
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state(device: str = "cpu"):
    """accelerate's ``PartialState`` (``cpu=True`` on CPU), or a single-process stand-in when not launched.

    >>> state = process_state("cpu")  # doctest: +SKIP
    >>> state.num_processes, state.is_main_process
    (1, True)
    """
    if not _launched():
        return SingleProcess()
    from accelerate import PartialState

    return PartialState(cpu=str(device).startswith("cpu"))


@dataclass
class SingleProcess:
    """What ``PartialState`` offers, for a run that was not launched with several processes."""

    num_processes: int = 1
    process_index: int = 0
    is_main_process: bool = True

    def wait_for_everyone(self) -> None:
        pass


def device_for(state, device: str) -> str:
    """Each process on its own GPU under accelerate (``cuda`` -> ``cuda:<local rank>``)."""
    if str(device) == "cuda" and getattr(state, "num_processes", 1) > 1:
        return str(state.device)
    return str(device)


def my_share(state, items: Sequence) -> list:
    """This process's contiguous share of ``items`` (all of them in a single process)."""
    if state.num_processes <= 1:
        return list(items)
    with state.split_between_processes(list(items)) as part:
        return list(part)


def partial_path(out_dir: Path, rank: int) -> Path:
    return Path(out_dir) / f".manifest.rank{rank}.json"


def recover_partials(out_dir: Path, header: dict, order: list[tuple[str, str]]) -> None:
    """Main process, before planning: fold partial manifests left by a killed multi-process run into manifest.json."""
    out_dir = Path(out_dir)
    partials = sorted(out_dir.glob(PARTIAL_GLOB))
    if not partials:
        return
    update_manifest(out_dir / MANIFEST, header, order, [r for p in partials for r in read_records(p)])
    for p in partials:
        p.unlink(missing_ok=True)


def final_merge(out_dir: Path, header: dict, order: list[tuple[str, str]], kept: list[ImageRecord]) -> Manifest:
    """Main process, after every rank finished: kept records + every partial -> manifest.json (scene order)."""
    out_dir = Path(out_dir)
    partials = sorted(out_dir.glob(PARTIAL_GLOB))
    new = [r for p in partials for r in read_records(p)]
    done = {r.key for r in kept} | {r.key for r in new}  # kept records are re-read under the manifest lock
    manifest = update_manifest(out_dir / MANIFEST, header, [k for k in order if k in done], new)
    for p in partials:
        p.unlink(missing_ok=True)
    return manifest

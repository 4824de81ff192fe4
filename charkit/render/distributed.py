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

from pathlib import Path

from ..distributed import SingleProcess, device_for, my_share, process_state  # noqa: F401 (re-exported)
from .manifest import MANIFEST, PARTIAL_GLOB, ImageRecord, Manifest, read_records, update_manifest


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


class RecordWriter:
    """Writes every finished record at once: manifest.json under its file lock (one process), or this rank's
    partial manifest (several processes), which the main process merges in :meth:`finish`.

    Render and repair differ only in how manifest.json is updated (:meth:`update`: which keys, in which order)
    and what the merge keeps of the folder's earlier records (:meth:`merge`).
    """

    def __init__(self, out_dir: Path, state):
        self.out_dir = out_dir
        self.state = state
        self.new: list[ImageRecord] = []
        self.partial = None if state.num_processes <= 1 else partial_path(out_dir, state.process_index)

    def update(self) -> Manifest:
        raise NotImplementedError

    def merge(self) -> Manifest:
        raise NotImplementedError

    def add(self, rec: ImageRecord) -> None:
        from .manifest import write_partial

        self.new.append(rec)
        if self.partial is None:
            self.update()
        else:
            write_partial(self.partial, self.new)

    def finish(self) -> Manifest | None:
        """Every process waits; the main one writes the final manifest.json and returns it (None elsewhere)."""
        self.state.wait_for_everyone()
        manifest = None
        if self.state.is_main_process:
            manifest = self.update() if self.partial is None else self.merge()
        self.state.wait_for_everyone()
        return manifest

"""Training data: the prepped dataset, batches, and the latent / text-embedding caches.

``charkit prep`` writes ``characters/NAME/dataset/dataset.json`` (items with file, caption, width,
height); :func:`load_dataset` reads it and :func:`check_images` checks
every image before the model loads, so a corrupt file fails in the first second with its name.

Batches come from one aspect bucket (images of one size) at a time. An epoch is every training image
``train.repeats`` times plus as many regularisation images (kohya's rule), shuffled within buckets and
cut into batches, the batches shuffled (:func:`epoch_batches`, seeded by ``(seed, epoch)``). Everything
else random about a step (which caption is dropped, noise, timesteps) is drawn from
:func:`step_generator`, seeded from ``(seed, rank, step, micro-step)``: a resumed run draws exactly
what the uninterrupted run drew, with no generator state to carry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CharkitError
from ..images import load_image
from ..stagefiles import DatasetFile, read_stage_file

DATASET_DIR = "dataset"
DATASET_FILE = "dataset.json"


@dataclass(frozen=True)
class TrainItem:
    """One training image: path, caption and pixel size (as prepped), and where it came from.

    ``original`` is the crop's (height, width) in the source photo (SDXL's size conditioning: smaller than
    the item when prep upscaled the crop); None when unknown (the item's own size is used). ``reg`` marks a
    regularisation (class) image.
    """

    path: Path
    caption: str
    width: int
    height: int
    original: tuple[int, int] | None = None
    reg: bool = False


@dataclass
class TrainDataset:
    """The items of ``dataset.json`` at the training resolution, grouped into same-size buckets."""

    root: Path
    character: str
    family: str
    resolution: int
    items: list[TrainItem]
    notes: list[str] = field(default_factory=list)

    @property
    def buckets(self) -> dict[tuple[int, int], list[int]]:
        """``(height, width) -> item indices``, in a stable order."""
        out: dict[tuple[int, int], list[int]] = {}
        for i, it in enumerate(self.items):
            out.setdefault((it.height, it.width), []).append(i)
        return dict(sorted(out.items()))

    @property
    def captions(self) -> list[str]:
        return sorted({it.caption for it in self.items})

    @property
    def train_items(self) -> list[int]:
        return [i for i, it in enumerate(self.items) if not it.reg]

    @property
    def reg_items(self) -> list[int]:
        return [i for i, it in enumerate(self.items) if it.reg]


@dataclass
class TrainBatch:
    """What a family's ``training_loss`` consumes."""

    latents: torch.Tensor  # scaled, (b, c, h, w)
    text: dict[str, torch.Tensor]
    sizes: list[tuple[int, int]]  # (height, width) in pixels per sample
    crops: list[tuple[int, int]]  # crop top-left per sample (prepped crops: (0, 0))
    captions: list[str]
    indices: list[int]
    originals: list[tuple[int, int]] | None = None  # (height, width) of each crop in its source photo
    weights: torch.Tensor | None = None  # per-sample loss weight (regularisation images: prior_loss_weight)


# ----------------------------------------------------------------------------------------- dataset


def dataset_dir(character_dir: str | os.PathLike) -> Path:
    return Path(character_dir) / DATASET_DIR


def load_dataset(
    character_dir: str | os.PathLike,
    *,
    family: str,
    resolution: int | None = None,
    size_multiple: int = 8,
    folder: str | os.PathLike | None = None,
) -> TrainDataset:
    """Read the prepped dataset of a character (``charkit prep`` writes it; training's prepare_dataset runs it).

    ``resolution`` is nominal, as prep uses it (buckets of area about resolution**2). A smaller one
    than the dataset's scales the prepped sizes down; a larger one is refused (upscaled crops teach
    blur): re-run prep at that resolution.

    >>> ds = load_dataset("characters/alice", family="sd15")  # doctest: +SKIP
    >>> len(ds.items), ds.resolution  # doctest: +SKIP
    (14, 512)
    """
    root = Path(folder) if folder is not None else dataset_dir(character_dir)
    meta_path = root / DATASET_FILE
    if not meta_path.is_file():
        raise CharkitError(f"{meta_path}: no dataset; run `charkit prep {character_dir}` first")
    meta = read_stage_file(meta_path, DatasetFile, fix=f"re-run `charkit prep {character_dir}`")
    if not meta.items:
        why = (
            f" (all {len(meta.rejected)} references were rejected, see {root / 'prep_report.html'})"
            if meta.rejected
            else ""
        )
        raise CharkitError(f"{meta_path}: the dataset has no images{why}; add usable photos and re-run `charkit prep`")
    items = []
    for n, raw in enumerate(meta.items):
        path = (root / raw.file).resolve()
        if root.resolve() not in path.parents:
            raise CharkitError(
                f"{meta_path}: item {n} file {raw.file!r} is outside the dataset folder; re-run `charkit prep`"
            )
        x0, y0, x1, y1 = raw.crop_box
        original = (max(1, round(y1 - y0)), max(1, round(x1 - x0)))
        items.append(TrainItem(path=path, caption=raw.caption, width=raw.width, height=raw.height, original=original))
    notes: list[str] = []
    # Prep's resolution is nominal: buckets keep an area of about resolution**2 at several aspect ratios.
    prepped = meta.resolution
    target = resolution or prepped
    if target > prepped:
        raise CharkitError(
            f"{meta_path}: prepped at {prepped}px but training asks for {target}px; re-run "
            f"`charkit prep {character_dir} --family {family} --resolution {target}`"
        )
    if target < prepped:
        items = [_rescaled(it, target / prepped, size_multiple) for it in items]
        notes.append(f"dataset prepped at {prepped}px, scaled to {target}px for training")
    for it in items:
        if it.width % size_multiple or it.height % size_multiple:
            raise CharkitError(
                f"{it.path}: {it.width}x{it.height} is not a multiple of {size_multiple} pixels as {family} needs; "
                f"re-run `charkit prep {character_dir} --family {family}`"
            )
    if meta.family != family:
        notes.append(f"dataset prepped for {meta.family}, training {family}")
    return TrainDataset(
        root=root,
        character=meta.character,
        family=family,
        resolution=target,
        items=items,
        notes=notes,
    )


def _rescaled(it: TrainItem, factor: float, multiple: int) -> TrainItem:
    w = max(multiple, int(round(it.width * factor / multiple)) * multiple)
    h = max(multiple, int(round(it.height * factor / multiple)) * multiple)
    return TrainItem(path=it.path, caption=it.caption, width=w, height=h, original=it.original, reg=it.reg)


REG_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def load_reg_images(folder: str | os.PathLike, dataset: TrainDataset, *, class_word: str) -> TrainDataset:
    """``dataset`` plus the regularisation images of ``folder``, each fitted (centre crop) to the dataset bucket
    nearest its aspect; caption: the image's ``.txt`` beside it, else the class word.

    >>> ds = load_reg_images("characters/alice/reg", ds, class_word="woman")  # doctest: +SKIP
    """
    from PIL import Image

    from ..dataset.buckets import Bucket, choose_bucket

    root = Path(folder)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in REG_SUFFIXES) if root.is_dir() else []
    if not files:
        raise CharkitError(
            f"train.reg_images {root}: no images there (.png/.jpg/.webp); add class photos or set reg_images = ''"
        )
    buckets = [Bucket(w, h) for h, w in dataset.buckets]
    reg = []
    for f in files:
        try:
            with Image.open(f) as im:
                w, h = im.size
        except (OSError, ValueError) as e:
            raise CharkitError(f"{f}: not a readable image ({e}); remove it from train.reg_images") from None
        b = choose_bucket(w, h, buckets)
        txt = f.with_suffix(".txt")
        caption = " ".join(txt.read_text(encoding="utf-8").split()) if txt.is_file() else class_word
        reg.append(TrainItem(path=f.resolve(), caption=caption or class_word, width=b.width, height=b.height, reg=True))
    notes = [*dataset.notes, f"{len(reg)} regularisation images from {root}"]
    return dataclasses.replace(dataset, items=[*dataset.items, *reg], notes=notes)


def load_pixels(item: TrainItem) -> torch.Tensor:
    """The item's image as a ``(3, H, W)`` float tensor in [-1, 1] at the item's size.

    Raises a one-line CharkitError naming the file when it cannot be decoded.
    """
    try:
        img = load_image(item.path).image
    except ValueError as e:
        raise CharkitError(f"{item.path}: {e}; re-run `charkit prep` or remove the file from dataset.json") from None
    if img.size != (item.width, item.height):
        from PIL import Image, ImageOps

        img = ImageOps.fit(img, (item.width, item.height), method=Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def check_images(dataset: TrainDataset) -> None:
    """Decode every image once (before any model loads): a corrupt file is a clear error, not a crash mid-run."""
    for it in dataset.items:
        load_pixels(it)


# ------------------------------------------------------------------------------------------ sampling


def step_generator(seed: int, rank: int, step: int, micro: int = 0) -> torch.Generator:
    """The CPU generator of one (micro-)step: a pure function of its coordinates."""
    digest = hashlib.sha256(f"charkit-train:{seed}:{rank}:{step}:{micro}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _perm(n: int, generator: torch.Generator) -> list[int]:
    return torch.randperm(n, generator=generator).tolist() if n else []


def epoch_batches(
    dataset: TrainDataset, batch_size: int, *, seed: int, epoch: int, repeats: int = 1
) -> list[list[int]]:
    """The batches of one epoch: every training image ``repeats`` times and, when there are regularisation
    images, as many of those (cycled), shuffled within their aspect bucket, cut into batches (the last one
    of a bucket may be smaller) and the batches shuffled. A pure function of its arguments.

    >>> ds = TrainDataset(Path("."), "a", "sd15", 64, [TrainItem(Path(f"{i}.png"), "c", 64, 64) for i in range(3)])
    >>> sorted(len(b) for b in epoch_batches(ds, 2, seed=0, epoch=0))
    [1, 2]
    """
    digest = hashlib.sha256(f"charkit-epoch:{seed}:{epoch}".encode()).digest()
    g = torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    train, reg = dataset.train_items, dataset.reg_items
    samples = [i for i in train for _ in range(repeats)]
    if reg:  # as many regularisation samples as training samples, a fresh order each epoch
        order = [reg[j] for j in _perm(len(reg), g)]
        samples += [order[k % len(order)] for k in range(len(samples))]
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i in samples:
        it = dataset.items[i]
        by_bucket.setdefault((it.height, it.width), []).append(i)
    batches = []
    for key in sorted(by_bucket):
        members = [by_bucket[key][j] for j in _perm(len(by_bucket[key]), g)]
        batches += [members[k : k + batch_size] for k in range(0, len(members), batch_size)]
    return [batches[j] for j in _perm(len(batches), g)]


def batches_per_epoch(dataset: TrainDataset, batch_size: int, repeats: int = 1) -> int:
    return len(epoch_batches(dataset, batch_size, seed=0, epoch=0, repeats=repeats))


def steps_for_epochs(
    dataset: TrainDataset, epochs: int, *, batch_size: int, repeats: int, accumulation: int, processes: int
) -> int:
    """Optimizer steps that cover ``epochs`` epochs (each step takes accumulation x processes batches)."""
    return max(1, math.ceil(epochs * batches_per_epoch(dataset, batch_size, repeats) / (accumulation * processes)))


def batch_at(dataset: TrainDataset, slot: int, *, batch_size: int, seed: int, repeats: int = 1) -> list[int]:
    """The ``slot``-th batch of the run (slots count every process's micro-batches, epoch after epoch)."""
    n = batches_per_epoch(dataset, batch_size, repeats)
    epoch, k = divmod(slot, n)
    return epoch_batches(dataset, batch_size, seed=seed, epoch=epoch, repeats=repeats)[k]


def drop_captions(captions: list[str], p: float, generator: torch.Generator) -> list[str]:
    if not p:
        return captions
    keep = torch.rand(len(captions), generator=generator) >= p
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


# -------------------------------------------------------------------------------------------- caches


class LatentSource:
    """VAE latent distributions of the training images: encoded once up front (cached) or every step.

    The cache holds each image's posterior mean and std, and a sample is drawn per step with the
    step's generator, so cached training sees the same randomness as uncached training.
    """

    def __init__(self, pipe, dataset: TrainDataset, family_mod, *, cached: bool, device, dtype=torch.float32):
        self.pipe, self.dataset, self.family = pipe, dataset, family_mod
        self.cached, self.device, self.dtype = cached, torch.device(device), dtype
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @contextlib.contextmanager
    def _encoding_vae(self):
        """The VAE in a dtype safe for encoding: an fp16 VAE that asks for it (``force_upcast``, e.g. SDXL's,
        which overflows in fp16) runs in fp32, as the pipelines do when they decode; outside any autocast."""
        vae = self.pipe.vae
        upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
        # torch's own Module.to: diffusers' override warns on every dtype cast (an upcast per uncached step).
        if upcast:
            torch.nn.Module.to(vae, torch.float32)
        try:
            with torch.autocast(device_type=self.device.type, enabled=False):
                yield vae
        finally:
            if upcast:
                torch.nn.Module.to(vae, torch.float16)

    @torch.no_grad()
    def _encode(self, vae, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.stack([load_pixels(self.dataset.items[i]) for i in indices])
        dist = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def prepare(self, progress=None) -> None:
        """Fill the cache (no-op when uncached)."""
        if not self.cached:
            return
        with self._encoding_vae() as vae:
            for i in range(len(self.dataset.items)):
                if i not in self._cache:
                    mean, std = self._encode(vae, [i])
                    self._cache[i] = (mean[0], std[0])
                if progress is not None:
                    progress()

    def sample(self, indices: list[int], generator: torch.Generator) -> torch.Tensor:
        """Scaled latents of ``indices`` (one posterior sample each)."""
        if self.cached:
            mean = torch.stack([self._cache[i][0] for i in indices])
            std = torch.stack([self._cache[i][1] for i in indices])
        else:
            with self._encoding_vae() as vae:
                mean, std = self._encode(vae, indices)
        eps = torch.randn(mean.shape, generator=generator).to(mean)
        latents = mean + std * eps
        return self.family.scale_latents(self.pipe, latents).to(self.dtype)


class TextSource:
    """Text conditioning per caption: encoded once (cached) or every step (always when the encoder trains)."""

    def __init__(self, pipe, family_mod, *, cached: bool, device, trainable: bool = False, shared_keys=()):
        self.pipe, self.family, self.device = pipe, family_mod, torch.device(device)
        self.shared_keys = tuple(shared_keys)  # the family's SPEC.shared_text_keys
        self.cached = cached and not trainable
        self.trainable = trainable
        self._cache: dict[str, dict[str, torch.Tensor]] = {}

    def prepare(self, captions: list[str]) -> None:
        if not self.cached:
            return
        with torch.no_grad():
            for c in captions:
                if c not in self._cache:
                    out = self.family.encode_text(self.pipe, [c], device=self.device)
                    self._cache[c] = {k: v.detach() for k, v in out.items()}

    def get(self, captions: list[str]) -> dict[str, torch.Tensor]:
        if not self.cached:
            if self.trainable:
                return self.family.encode_text(self.pipe, captions, device=self.device)
            with torch.no_grad():
                return self.family.encode_text(self.pipe, captions, device=self.device)
        missing = [c for c in dict.fromkeys(captions) if c not in self._cache]
        if missing:
            self.prepare(missing)
        parts = [self._cache[c] for c in captions]
        shared = set(self.shared_keys)
        return {k: (parts[0][k] if k in shared else torch.cat([p[k] for p in parts])) for k in parts[0]}


def make_batch(
    dataset: TrainDataset,
    latents: LatentSource,
    texts: TextSource,
    *,
    indices: list[int],
    caption_dropout: float,
    generator: torch.Generator,
    prior_loss_weight: float = 1.0,
) -> TrainBatch:
    """One batch of ``indices`` (one bucket): captions (with dropout), latents, text conditioning, loss weights."""
    idx = list(indices)
    items = [dataset.items[i] for i in idx]
    captions = drop_captions([it.caption for it in items], caption_dropout, generator)
    lat = latents.sample(idx, generator)
    weights = None
    if any(it.reg for it in items):
        weights = torch.tensor([prior_loss_weight if it.reg else 1.0 for it in items], device=lat.device)
    return TrainBatch(
        latents=lat,
        text=texts.get(captions),
        sizes=[(it.height, it.width) for it in items],
        crops=[(0, 0)] * len(idx),
        captions=captions,
        indices=idx,
        originals=[it.original or (it.height, it.width) for it in items],
        weights=weights,
    )

"""``charkit prep``: turn a character's reference photos into a training dataset.

Lifecycle (each step a public function you can call and test alone)::

    check_inputs -> analyze_refs (intake + detect/embed) -> screen_faces -> reject_duplicates
    -> reject_outliers -> crop_item (+ caption_for) -> record

Originals in ``refs/`` are only read. The output folder (default ``characters/NAME/dataset/``)
is built in a hidden temporary sibling and swapped in as a whole, so a reader sees the old
dataset or the complete new one, never half of one; ``dataset.json`` is the last file
written. Layout and rules: docs/dataset.md.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .. import __version__
from ..character import Character, load_character, resolve_character_dir
from ..devices import onnx_providers
from ..environment import check_output_dir
from ..errors import CharkitError
from ..identity import BackendInfo, Face, FaceBackend, FaceCache, get_backend, screening
from ..identity.analyze import THUMB_SIDE as CACHE_THUMB_SIDE
from ..identity.cache import CachedImage
from ..images import ImageRejection, LoadedImage, make_thumbnail, read_image
from ..interrupts import Interrupted, raise_if_stopped, stopped
from ..paths import atomic_write_bytes, atomic_write_json, atomic_write_text, check_name, sha256_bytes
from ..stagefiles import DatasetFile, write_stage_file
from . import report as report_mod
from .buckets import Bucket, CropPlan, aspect_buckets, bucket_step, choose_bucket, plan_crop
from .phash import hamming, phash

#: a second face larger than this fraction of the largest face makes the photo ambiguous
SEVERAL_FACES_AREA = 0.25
#: near-duplicates: perceptual-hash Hamming distance (of 64 bits) at or under this ...
DEFAULT_MAX_DUPLICATES_DISTANCE = 10
#: ... and an embedding similarity 3/4 of the way from the threshold towards 1.0 (screening.PREP_DUPLICATE_FRACTION;
#: dlib, threshold 0.40: 0.85; different photos of one person measure 0.47-0.68)
DATASET_FILE = "dataset.json"
REPORT_JSON = "prep_report.json"
REPORT_HTML = "prep_report.html"
IMAGES_DIR = "images"
THUMB_SIDE = 188


@dataclass
class PrepPlan:
    """Validated inputs: nothing has been read from the photos yet."""

    character: Character
    family: str
    resolution: int
    buckets: list[Bucket]
    refs: list[Path]
    out: Path


@dataclass
class Candidate:
    """One readable reference and what detection found in it (no pixels kept)."""

    path: Path
    source: str  # path relative to the refs folder, posix
    width: int
    height: int
    faces: list[Face]
    sha256: str
    notes: list[str] = field(default_factory=list)
    phash_image: int = 0
    phash_face: int = 0
    sharpness: float = 0.0
    similarity: float | None = None  # leave-one-out, set by reject_outliers
    thumbnail: bytes | None = None  # small JPEG with the faces outlined, for the report

    @property
    def face(self) -> Face:
        return self.faces[0]  # backends return the largest face first

    @property
    def embedding(self) -> np.ndarray:
        return self.face.embedding


@dataclass
class DatasetItem:
    """One training image as written to ``dataset.json``."""

    file: str  # "images/<name>.png", relative to the dataset folder
    caption: str
    width: int
    height: int
    source: str
    face_box: tuple[float, float, float, float]  # in the crop's pixels
    similarity: float | None
    yaw: float | None
    pose: str
    face_fraction: float  # face box area / source photo area
    size_bin: str
    source_width: int
    source_height: int
    crop_box: tuple[float, float, float, float]  # in source pixels
    scale: float  # output / source pixels (> 1: upscaled)
    face_cut: bool = False

    def to_dict(self) -> dict:
        r = lambda v, nd=1: round(float(v), nd)
        return {
            "file": self.file,
            "caption": self.caption,
            "width": self.width,
            "height": self.height,
            "source": self.source,
            "face_box": [r(v) for v in self.face_box],
            "similarity": None if self.similarity is None else r(self.similarity, 4),
            "yaw": self.yaw,
            "pose": self.pose,
            "face_fraction": r(self.face_fraction, 4),
            "size_bin": self.size_bin,
            "source_width": self.source_width,
            "source_height": self.source_height,
            "crop_box": [r(v) for v in self.crop_box],
            "scale": r(self.scale, 3),
            "face_cut": self.face_cut,
        }


@dataclass
class PrepResult:
    """What ``prep_dataset`` wrote."""

    character: str
    family: str
    resolution: int
    backend: BackendInfo
    out: Path
    items: list[DatasetItem]
    rejected: list[ImageRejection]  # path = the original file, reason = "no_face", "near_duplicate of x.jpg", ...
    dataset_json: Path
    report_json: Path
    report_html: Path
    coverage: dict
    warnings: list[str]


# --------------------------------------------------------------------------------------- check_inputs


def family_defaults(family: str) -> tuple[int, int]:
    """(resolution, size multiple) of a family, from its spec (no torch, no diffusers)."""
    from ..families import get_spec

    spec = get_spec(family)
    return int(spec.width), int(spec.size_multiple)


def check_inputs(
    character_dir: str | os.PathLike,
    *,
    family: str = "sd15",
    resolution: int | None = None,
    out: str | os.PathLike | None = None,
) -> PrepPlan:
    """Validate the character folder, its references, the family/resolution and the output folder.

    >>> plan = check_inputs("characters/alice")  # doctest: +SKIP
    >>> plan.out  # doctest: +SKIP
    PosixPath('characters/alice/dataset')
    """
    d = resolve_character_dir(character_dir)
    if not d.is_dir():
        raise CharkitError(f"{d}: character folder not found; create it with `charkit character init NAME --refs DIR`")
    character = load_character(d)
    default_res, multiple = family_defaults(family)
    resolution = default_res if resolution is None else resolution
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 64 or resolution % multiple:
        raise CharkitError(
            f"--resolution {resolution!r}: must be a whole number of pixels, at least 64 and a multiple of {multiple} "
            f"(the {family} default is {default_res})"
        )
    buckets = aspect_buckets(resolution, step=bucket_step(resolution, multiple), size_multiple=multiple)
    out_dir = Path(out) if out is not None else character.dir / "dataset"
    _check_out(out_dir, character)
    refs = character.ref_paths()  # raises "no reference images" on an empty folder
    return PrepPlan(character=character, family=family, resolution=resolution, buckets=buckets, refs=refs, out=out_dir)


def _check_out(out: Path, character: Character) -> None:
    # The output folder is replaced as a whole: make sure that can never remove the photos or the character.
    o, refs, cdir = out.resolve(), character.refs_dir.resolve(), character.dir.resolve()
    if o in (cdir, refs) or o in refs.parents:
        raise CharkitError(
            f"--out {out}: would replace the folder holding the reference photos; choose a new folder such as {cdir / 'dataset'}"
        )
    if refs in o.parents:
        raise CharkitError(
            f"--out {out}: is inside the refs folder {refs}, so the crops would become references next time; "
            'keep photos in their own folder (refs = "refs") or choose another --out'
        )
    if o.exists() and not o.is_dir():
        raise CharkitError(f"--out {out}: is a file; choose a folder")
    check_output_dir(out, "--out")  # a file in the way, a read-only or full disk
    if o.is_dir() and any(o.iterdir()) and not (o / DATASET_FILE).is_file():
        raise CharkitError(
            f"--out {out}: exists and is not a charkit dataset (no {DATASET_FILE}); choose an empty or new folder"
        )


# -------------------------------------------------------------------------------- intake + detect/embed


def intake(path: str | os.PathLike) -> LoadedImage | ImageRejection:
    """The shared image intake (EXIF rotation, alpha, 16-bit...); an unusable file becomes a rejection."""
    r = read_image(path)
    if isinstance(r, ImageRejection):
        return ImageRejection(str(path), f"unreadable: {r.reason}")
    return r


def detect(
    loaded: LoadedImage, backend: FaceBackend, *, source: str, sha256: str, cache: FaceCache | None = None
) -> Candidate:
    """Faces with embeddings (through the shared face cache), plus perceptual hashes and sharpness."""
    img = loaded.image
    hit = cache.get(backend.info.cache_key, sha256) if cache is not None else None
    if hit is not None:
        faces = hit.faces
    else:
        faces = backend.analyze(np.asarray(img))
        if cache is not None:
            entry = CachedImage(faces, img.width, img.height, list(loaded.notes), make_thumbnail(img, CACHE_THUMB_SIDE))
            cache.put(backend.info.cache_key, sha256, entry)
    cand = Candidate(
        path=Path(loaded.path),
        source=source,
        width=img.width,
        height=img.height,
        faces=faces,
        sha256=sha256,
        notes=list(loaded.notes),
        phash_image=phash(img),
    )
    if faces:
        region = img.crop(_face_region(faces[0].box, img.width, img.height))
        cand.phash_face = phash(region)
        cand.sharpness = _sharpness(img.crop(tuple(round(v) for v in _clamp_box(faces[0].box, img.width, img.height))))
    cand.thumbnail = _outlined_thumbnail(img, faces)
    return cand


def analyze_refs(
    plan: PrepPlan, backend: FaceBackend, *, cache: FaceCache | None = None
) -> tuple[list[Candidate], list[ImageRejection]]:
    """Read every reference (one at a time: no decoded photo is kept) and find its faces."""
    cands, rejected = [], []
    for path in plan.refs:
        raise_if_stopped()  # Ctrl-C: stop between photos (nothing is written before the dataset is complete)
        source = path.relative_to(plan.character.refs_dir).as_posix()
        loaded = intake(path)
        if isinstance(loaded, ImageRejection):
            rejected.append(loaded)
            continue
        sha = sha256_bytes(Path(path).read_bytes())
        cands.append(detect(loaded, backend, source=source, sha256=sha, cache=cache))
    return cands, rejected


def _clamp_box(box, w, h):
    x0, y0, x1, y1 = box
    return (min(max(x0, 0), w - 1), min(max(y0, 0), h - 1), min(max(x1, 1), w), min(max(y1, 1), h))


def _face_region(box, w, h):
    # A square twice the face's size: holds hair and chin, survives re-crops of the same photo.
    x0, y0, x1, y1 = box
    side = 2 * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return tuple(round(v) for v in _clamp_box((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), w, h))


def _sharpness(region: Image.Image) -> float:
    # Variance of the Laplacian: the standard focus measure; only compared between copies of one photo.
    grey = np.asarray(region.convert("L"), dtype=np.float64)
    return float(ndimage.laplace(grey).var()) if grey.size else 0.0


def _outlined_thumbnail(img: Image.Image, faces: list[Face]) -> bytes:
    # the kept face in green, any other face in red
    boxes = [(f.box, (0, 200, 0) if i == 0 else (230, 0, 0)) for i, f in enumerate(faces)]
    return make_thumbnail(img, THUMB_SIDE, boxes=boxes)


# ----------------------------------------------------------------------------------------- filters


def screen_faces(cands: list[Candidate]) -> tuple[list[Candidate], list[ImageRejection]]:
    """Reject photos with no face, or with a second face of comparable size (whose face would it learn?)."""
    kept, rejected = [], []
    for c in cands:
        if not c.faces:
            rejected.append(ImageRejection(str(c.path), "no_face"))
            continue
        big = [f for f in c.faces if f.area > SEVERAL_FACES_AREA * c.face.area]
        if len(big) > 1:
            rejected.append(ImageRejection(str(c.path), f"several_faces ({len(big)} faces of comparable size)"))
            continue
        if len(c.faces) > 1:
            c.notes.append(f"ignored {len(c.faces) - 1} small background face(s)")
        kept.append(c)
    return kept, rejected


def duplicate_similarity(threshold: float) -> float:
    """Embedding similarity above which two photos may be copies: 3/4 of the way from the threshold to 1."""
    return screening.duplicate_similarity(threshold, screening.PREP_DUPLICATE_FRACTION)


def reject_duplicates(
    cands: list[Candidate],
    backend: FaceBackend,
    *,
    max_distance: int = DEFAULT_MAX_DUPLICATES_DISTANCE,
    min_similarity: float | None = None,
) -> tuple[list[Candidate], list[ImageRejection]]:
    """Near-duplicates need both: a nearly identical face embedding *and* a small perceptual-hash distance
    (whole photo or the face region). The larger, then sharper, copy is kept.
    """
    min_similarity = duplicate_similarity(backend.info.threshold) if min_similarity is None else min_similarity
    best_first = sorted(
        range(len(cands)), key=lambda i: (-(cands[i].width * cands[i].height), -cands[i].sharpness, cands[i].source)
    )

    def same_picture(i: int, k: int) -> bool:
        a, b = cands[i], cands[k]
        return min(hamming(a.phash_image, b.phash_image), hamming(a.phash_face, b.phash_face)) <= max_distance

    twins = screening.find_duplicates(
        [c.embedding for c in cands],
        backend,
        min_similarity=min_similarity,
        order=best_first,
        same_picture=same_picture,
    )
    rejected = [
        ImageRejection(str(cands[i].path), f"near_duplicate of {cands[k].source}") for i, k in sorted(twins.items())
    ]
    return [c for i, c in enumerate(cands) if i not in twins], rejected


def reject_outliers(
    cands: list[Candidate], backend: FaceBackend, *, threshold: float | None = None
) -> tuple[list[Candidate], list[ImageRejection]]:
    """Leave-one-out identity check (:func:`charkit.identity.screening.find_outliers`): the worst face below the
    threshold goes first and the rest are re-scored; outliers stay a minority (with no majority to disagree with,
    the remaining faces are kept and the report warns instead). Sets ``similarity`` on the kept ones.
    """
    threshold = backend.info.threshold if threshold is None else threshold
    found = (
        screening.find_outliers(np.stack([c.embedding for c in cands]), backend, threshold=threshold) if cands else {}
    )
    kept = [c for i, c in enumerate(cands) if i not in found]
    rejected = [
        ImageRejection(str(cands[i].path), f"identity_outlier (similarity {v:.2f} < threshold {threshold:.2f})")
        for i, v in sorted(found.items())
    ]
    loo = screening.leave_one_out(backend, np.stack([c.embedding for c in kept])) if kept else []
    for c, v in zip(kept, loo):
        c.similarity = None if np.isnan(v) else float(v)
    return kept, rejected


# ------------------------------------------------------------------------------------ crop + caption


def crop_item(cand: Candidate, plan: PrepPlan) -> tuple[Image.Image, CropPlan]:
    """The face-aware crop of one kept reference at its aspect bucket, resized with LANCZOS."""
    loaded = intake(cand.path)
    if isinstance(loaded, ImageRejection):  # changed under us since detection
        raise CharkitError(f"{cand.path}: {loaded.reason}; the file changed during prep, run it again")
    img = loaded.image
    bucket = choose_bucket(img.width, img.height, plan.buckets)
    cp = plan_crop(img.width, img.height, cand.face.box, bucket)
    return img.resize((bucket.width, bucket.height), Image.LANCZOS, box=cp.box), cp


def caption_for(character: Character, ref_path: str | os.PathLike) -> str:
    """``"<trigger words> <class word>"``, then the text of ``refs/<stem>.txt`` when there is one.

    >>> caption_for(alice, "characters/alice/refs/01.jpg")  # doctest: +SKIP
    'ohwx woman, laughing on a beach'
    """
    base = " ".join(p for p in (character.trigger_text, character.spec.class_word.strip()) if p)
    txt = Path(ref_path).with_suffix(".txt")
    if not txt.is_file():
        return base
    try:
        extra = " ".join(txt.read_text(encoding="utf-8").split())
    except UnicodeDecodeError:
        raise CharkitError(f"{txt}: caption is not UTF-8 text; save it as UTF-8") from None
    return f"{base}, {extra}" if extra else base


def output_names(sources: list[str]) -> list[str]:
    """Safe, unique file stems for the crops: ``"sub dir/IMG 01.jpg"`` -> ``"sub_dir_IMG_01"``."""
    names, used = [], set()
    for s in sources:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(Path(s).with_suffix(""))).strip("._-")[:100] or "image"
        name, n = stem, 2
        while name.lower() in used:
            name, n = f"{stem}-{n}", n + 1
        used.add(name.lower())
        names.append(check_name(name, "dataset image name"))
    return names


def make_item(
    cand: Candidate, plan: PrepPlan, name: str, images_dir: Path, backend: FaceBackend
) -> tuple[DatasetItem, bytes]:
    """Crop, caption and write one kept reference into ``images_dir``; returns the item and a thumbnail."""
    crop, cp = crop_item(cand, plan)
    buf = io.BytesIO()
    crop.save(buf, format="PNG")
    atomic_write_bytes(images_dir / f"{name}.png", buf.getvalue())
    text = caption_for(plan.character, cand.path)
    atomic_write_text(images_dir / f"{name}.txt", text + "\n")
    yaw = report_mod.estimate_yaw(cand.face.landmarks, backend.info.name)
    frac = cand.face.area / float(cand.width * cand.height)
    item = DatasetItem(
        file=f"{IMAGES_DIR}/{name}.png",
        caption=text,
        width=cp.bucket.width,
        height=cp.bucket.height,
        source=cand.source,
        face_box=cp.face_box,
        similarity=cand.similarity,
        yaw=yaw,
        pose=report_mod.pose_bin(yaw),
        face_fraction=frac,
        size_bin=report_mod.size_bin(frac),
        source_width=cand.width,
        source_height=cand.height,
        crop_box=cp.box,
        scale=cp.scale,
        face_cut=cp.face_cut,
    )
    return item, make_thumbnail(crop, THUMB_SIDE)


# -------------------------------------------------------------------------------------------- record


@contextlib.contextmanager
def staging(out: Path):
    """Yield an empty hidden sibling of ``out``; on success swap it in for ``out`` as a whole.

    On any error the sibling is removed and ``out`` is left exactly as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in list(out.parent.glob(f".{out.name}.tmp-*")) + list(out.parent.glob(f".{out.name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)  # left by a run killed mid-way
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset is an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Two renames: the old folder moves aside, the new one moves in; the old one is removed last.
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "d")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_report(
    plan: PrepPlan, backend: FaceBackend, items: list[DatasetItem], rejected: list[ImageRejection], *, settings: dict
) -> dict:
    """The ``prep_report.json`` dict (the HTML page renders the same dict)."""
    refs_dir = plan.character.refs_dir
    kept = [it.to_dict() for it in items]
    rej = [{"source": _source(r.path, refs_dir), "reason": r.reason} for r in rejected]
    reasons = Counter(report_mod.reason_code(r.reason) for r in rejected)
    return {
        "charkit_version": __version__,
        "character": plan.character.name,
        "family": plan.family,
        "resolution": plan.resolution,
        "backend": backend.info.to_dict(),
        "threshold": backend.info.threshold,
        "settings": settings,
        "counts": {
            "references": len(plan.refs),
            "kept": len(items),
            "rejected": len(rejected),
            "reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        },
        "coverage": report_mod.coverage(kept, threshold=backend.info.threshold),
        "kept": kept,
        "rejected": rej,
        "dataset": DATASET_FILE if items else None,
    }


def write_reports(folder: Path, report: dict, thumbnails: dict[str, bytes | None]) -> tuple[Path, Path]:
    folder = Path(folder)
    atomic_write_json(folder / REPORT_JSON, report)
    atomic_write_text(folder / REPORT_HTML, report_mod.render_html(report, thumbnails))
    return folder / REPORT_JSON, folder / REPORT_HTML


def record(
    plan: PrepPlan,
    folder: Path,
    backend: FaceBackend,
    items: list[DatasetItem],
    rejected: list[ImageRejection],
    thumbnails: dict[str, bytes | None],
    *,
    settings: dict,
) -> dict:
    """Write the reports and, last, ``dataset.json`` into the staging ``folder``; returns the report dict."""
    report = build_report(plan, backend, items, rejected, settings=settings)
    write_reports(folder, report, thumbnails)
    refs_dir = plan.character.refs_dir
    dataset = DatasetFile(
        character=plan.character.name,
        family=plan.family,
        resolution=plan.resolution,
        backend=backend.info.to_dict(),
        trigger=plan.character.trigger_text,
        class_word=plan.character.spec.class_word,
        items=report["kept"],
        rejected=[{"source": _source(r.path, refs_dir), "reason": r.reason} for r in rejected],
    )
    write_stage_file(folder / DATASET_FILE, dataset)
    return report


def _source(path: str, refs_dir: Path) -> str:
    with contextlib.suppress(ValueError):
        return Path(path).relative_to(refs_dir).as_posix()
    return Path(path).name


def failed_dir(out: Path) -> Path:
    """Where the report of a run that kept nothing goes (the previous dataset stays untouched)."""
    return Path(out).parent / f"{Path(out).name}.failed"


# ---------------------------------------------------------------------------------------- lifecycle


def screen(
    plan: PrepPlan,
    backend: FaceBackend,
    *,
    cache: FaceCache | None,
    max_duplicates_distance: int,
    duplicate_similarity_min: float | None,
) -> tuple[list[Candidate], list[ImageRejection], dict[str, bytes | None]]:
    """analyze_refs -> screen_faces -> reject_duplicates -> reject_outliers: (kept, rejected in ref order, previews)."""
    cands, rejected = analyze_refs(plan, backend, cache=cache)
    previews = {str(c.path): c.thumbnail for c in cands}
    cands, r = screen_faces(cands)
    rejected += r
    # Duplicates go before the identity check: two copies of a stranger would vouch for each other.
    cands, r = reject_duplicates(
        cands, backend, max_distance=max_duplicates_distance, min_similarity=duplicate_similarity_min
    )
    rejected += r
    cands, r = reject_outliers(cands, backend)
    rejected += r
    order = {str(p): i for i, p in enumerate(plan.refs)}
    rejected.sort(key=lambda x: order.get(x.path, len(order)))
    return cands, rejected, previews


def record_failure(plan: PrepPlan, backend: FaceBackend, rejected, thumbs, *, settings: dict) -> CharkitError:
    """Every reference was rejected: the reports go to ``<out>.failed/`` (the old dataset stays) and the error says why."""
    with staging(failed_dir(plan.out)) as tmp:
        write_reports(tmp, build_report(plan, backend, [], rejected, settings=settings), thumbs)
    summary = report_mod.reasons_summary([x.reason for x in rejected])
    return CharkitError(
        f"{plan.character.refs_dir}: all {len(plan.refs)} references were rejected ({summary}); "
        f"see {failed_dir(plan.out) / REPORT_HTML}"
    )


def write_dataset(plan: PrepPlan, backend: FaceBackend, cands, rejected, thumbs, *, settings: dict):
    """Crops, captions, reports and dataset.json built in a staging folder and swapped in for ``plan.out``."""
    items: list[DatasetItem] = []
    with staging(plan.out) as tmp:
        (tmp / IMAGES_DIR).mkdir()
        for c, name in zip(cands, output_names([c.source for c in cands])):
            item, thumb = make_item(c, plan, name, tmp / IMAGES_DIR, backend)
            items.append(item)
            thumbs[item.file] = thumb
        report = record(plan, tmp, backend, items, rejected, thumbs, settings=settings)
    stale = failed_dir(plan.out)
    if (stale / REPORT_JSON).is_file():
        shutil.rmtree(stale, ignore_errors=True)  # an earlier run's failure report no longer applies
    return items, report


def prep_dataset(
    character_dir: str | os.PathLike,
    *,
    family: str = "sd15",
    resolution: int | None = None,
    backend: FaceBackend | None = None,
    out: str | os.PathLike | None = None,
    max_duplicates_distance: int = DEFAULT_MAX_DUPLICATES_DISTANCE,
    duplicate_similarity_min: float | None = None,
    cache: FaceCache | bool = True,
    device: str = "cpu",
) -> PrepResult:
    """Filter, crop and caption a character's references into ``<character>/dataset/``.

    >>> r = prep_dataset("characters/alice", family="sdxl")  # doctest: +SKIP
    >>> len(r.items), r.rejected[0].reason  # doctest: +SKIP
    (14, 'near_duplicate of 03.jpg')
    """
    plan = check_inputs(character_dir, family=family, resolution=resolution, out=out)
    if not isinstance(max_duplicates_distance, int) or not 0 <= max_duplicates_distance <= 64:
        raise CharkitError(
            f"--max-duplicates-distance {max_duplicates_distance!r}: must be a number of bits from 0 to 64"
        )
    backend = backend if backend is not None else get_backend("auto", providers=onnx_providers(device))
    try:
        cands, rejected, previews = screen(
            plan,
            backend,
            cache=FaceCache() if cache is True else (cache or None),
            max_duplicates_distance=max_duplicates_distance,
            duplicate_similarity_min=duplicate_similarity_min,
        )
    except Interrupted as e:
        raise stopped(
            f"{plan.out} was left as it was; run the same command again (faces already analysed come from the cache)",
            e.signal_name,
        ) from None
    thumbs = {"ref:" + _source(x.path, plan.character.refs_dir): previews.get(x.path) for x in rejected}
    settings = {
        "max_duplicates_distance": max_duplicates_distance,
        "duplicate_similarity": round(duplicate_similarity_min or duplicate_similarity(backend.info.threshold), 4),
        "several_faces_area": SEVERAL_FACES_AREA,
        "buckets": [b.label for b in plan.buckets],
    }
    if not cands:
        raise record_failure(plan, backend, rejected, thumbs, settings=settings)
    items, report = write_dataset(plan, backend, cands, rejected, thumbs, settings=settings)
    return PrepResult(
        character=plan.character.name,
        family=plan.family,
        resolution=plan.resolution,
        backend=backend.info,
        out=plan.out,
        items=items,
        rejected=rejected,
        dataset_json=plan.out / DATASET_FILE,
        report_json=plan.out / REPORT_JSON,
        report_html=plan.out / REPORT_HTML,
        coverage=report["coverage"],
        warnings=list(report["coverage"]["warnings"]),
    )

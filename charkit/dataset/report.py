"""Coverage of a prepared dataset and its report (``prep_report.json`` / ``prep_report.html``).

Coverage says what the LoRA will see: how the face is turned (yaw from the 5-point
landmarks: where the nose sits between the eyes) and how large it is in the photo.
A set that is all frontal close-ups trains a LoRA that cannot turn the head; the report
warns about thin coverage instead of failing.

The HTML is one self-contained file (inline CSS, thumbnails as data URIs) rendered by
jinja2 with autoescaping on: file names and captions come from the user.
"""

from __future__ import annotations

import math
from collections import Counter

#: |yaw| at or under this many degrees counts as frontal
FRONTAL_DEG = 15.0
POSE_BINS = ("left", "frontal", "right", "unknown")
#: face box area as a fraction of the source photo: close-up above the first, wide below the second
SIZE_BINS = ("close-up", "medium", "wide")
CLOSE_UP_FRACTION = 0.10
WIDE_FRACTION = 0.02
#: fewer kept photos than this draws a warning (10-30 is the usual advice for a character LoRA)
MIN_RECOMMENDED = 10
#: crops upscaled more than this draw a warning (small source photos train soft faces)
MAX_UPSCALE = 1.5


def _eyes_and_nose(landmarks, layout: str):
    """(left eye, right eye, nose) as image x/y points, or None when the layout is unknown."""
    pts = [tuple(map(float, p)) for p in landmarks]
    if len(pts) != 5:
        return None
    if layout == "dlib":  # shape_predictor_5: two corners of each eye, then the base of the nose
        e1 = ((pts[0][0] + pts[1][0]) / 2, (pts[0][1] + pts[1][1]) / 2)
        e2 = ((pts[2][0] + pts[3][0]) / 2, (pts[2][1] + pts[3][1]) / 2)
        nose = pts[4]
    elif layout == "insightface":  # eye, eye, nose tip, mouth corner, mouth corner
        e1, e2, nose = pts[0], pts[1], pts[2]
    else:
        return None
    left, right = sorted((e1, e2))
    return left, right, nose


def estimate_yaw(landmarks, layout: str) -> float | None:
    """Rough head yaw in degrees from 5 landmarks: 0 frontal, negative = turned to the image's left.

    The nose's position between the eyes, ``r`` in [0, 1], gives ``asin(2r - 1)``; good enough to
    bin poses, not a head-pose estimator.

    >>> estimate_yaw([(60, 40), (50, 40), (20, 40), (30, 40), (40, 60)], "dlib")
    0.0
    """
    found = _eyes_and_nose(landmarks, layout)
    if found is None:
        return None
    (lx, _), (rx, _), (nx, _) = found
    if rx - lx < 1e-6:
        return None
    r = (nx - lx) / (rx - lx)
    return round(math.degrees(math.asin(max(-1.0, min(1.0, 2 * r - 1)))), 1)


def pose_bin(yaw: float | None) -> str:
    if yaw is None:
        return "unknown"
    if yaw < -FRONTAL_DEG:
        return "left"
    if yaw > FRONTAL_DEG:
        return "right"
    return "frontal"


def size_bin(face_fraction: float) -> str:
    if face_fraction >= CLOSE_UP_FRACTION:
        return "close-up"
    if face_fraction < WIDE_FRACTION:
        return "wide"
    return "medium"


def reason_code(reason: str) -> str:
    """``"identity_outlier (similarity ...)"`` -> ``"identity_outlier"``; ``"unreadable: ..."`` -> ``"unreadable"``."""
    return reason.split(" ", 1)[0].split(":", 1)[0]


def reasons_summary(reasons: list[str]) -> str:
    """``"2 no_face, 1 identity_outlier"`` (most frequent first, then by name)."""
    counts = Counter(reason_code(r) for r in reasons)
    return ", ".join(f"{n} {code}" for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def coverage(items: list[dict], *, threshold: float | None = None) -> dict:
    """Counts per pose bin, size bin and bucket, plus warnings about thin coverage.

    ``items`` are dataset items as written to dataset.json (``pose``, ``size_bin``, ``scale``, ...).
    """
    pose = {b: 0 for b in POSE_BINS}
    size = {b: 0 for b in SIZE_BINS}
    buckets: Counter = Counter()
    for it in items:
        pose[it["pose"]] += 1
        size[it["size_bin"]] += 1
        buckets[f"{it['width']}x{it['height']}"] += 1
    n = len(items)
    warnings = []
    if 0 < n < MIN_RECOMMENDED:
        warnings.append(
            f"only {n} image{'s' if n != 1 else ''} kept; 10-30 varied photos train a steadier character LoRA"
        )
    known = n - pose["unknown"]
    if known >= 2 and pose["frontal"] == known:
        warnings.append(f"all {known} kept faces are frontal: add three-quarter and profile shots (left and right)")
    elif known >= 2 and (pose["left"] == 0) != (pose["right"] == 0):
        missing = "left" if pose["left"] == 0 else "right"
        warnings.append(f"no face turned to the {missing}: add a few shots turned that way")
    if n >= 2:
        for b in SIZE_BINS:
            if size[b] == n:
                others = " and ".join(x for x in SIZE_BINS if x != b)
                warnings.append(f"all {n} kept photos are {b} shots: add some {others} shots")
    upscaled = [it["file"] for it in items if it.get("scale", 1.0) > MAX_UPSCALE]
    if upscaled:
        warnings.append(
            f"{len(upscaled)} crop(s) upscaled more than {MAX_UPSCALE}x from small photos ({', '.join(upscaled[:5])}); "
            "larger originals train sharper faces"
        )
    cut = [it["file"] for it in items if it.get("face_cut")]
    if cut:
        warnings.append(f"the face does not fit whole in the crop of {', '.join(cut[:5])}")
    if threshold is not None:
        low = [it for it in items if it.get("similarity") is not None and it["similarity"] < threshold]
        if low:
            names = ", ".join(f"{it['source']} ({it['similarity']:.2f})" for it in low[:5])
            warnings.append(
                f"references that do not match the others but were kept (no clear majority to reject them): {names}; "
                "check they show the same person"
            )
    return {
        "pose": pose,
        "size": size,
        "buckets": dict(sorted(buckets.items())),
        "upscaled": len(upscaled),
        "warnings": warnings,
    }


def render_html(report: dict, thumbnails: dict[str, bytes | None]) -> str:
    """The self-contained HTML page for a ``prep_report.json`` dict.

    ``thumbnails`` maps a kept item's ``file`` (its crop) or ``"ref:" + source`` (a rejected
    original, faces outlined) to JPEG bytes.
    """
    from ..report import data_uri, environment

    thumbs = {k: data_uri(v) for k, v in thumbnails.items() if v is not None}
    return environment("charkit.dataset").get_template("prep_report.html.j2").render(r=report, thumbs=thumbs)

"""``training_report.json`` / ``training_report.html``: what a run did and why it shipped the checkpoint it did.

The JSON is the record (preset, device, precision, optimizer, caches, loss history, the step-0
baseline and every checkpoint's probe scores, the choice with its gates, comparisons and rule, the
exported files). The HTML page renders the same dict: a loss curve and per-checkpoint charts of
identity (with the no-LoRA baseline), prompt diversity and memorisation as inline SVG (coordinates
computed here, drawn through autoescaped ``{{ }}``), a table that says why each checkpoint won or
lost, and the probe grid with thumbnails inlined as ``data:`` URIs. The page is self-contained (no
scripts, no fetches; a Content-Security-Policy says so).
"""

from __future__ import annotations

import math
from pathlib import Path

from .. import __version__
from ..images import make_thumbnail
from ..paths import atomic_write_json, atomic_write_text
from ..report import data_uri, environment
from .evaluate import CHOICE_RULE

REPORT_JSON = "training_report.json"
REPORT_HTML = "training_report.html"
THUMB_SIDE = 160


def build_report(session, *, choice=None, export=None) -> dict:
    """The report dict of a (running or finished) session."""
    plan, preset = session.plan, session.preset
    prof = session.profile
    info = session.backend.info if session.backend is not None else None
    steps = session.step_seconds
    return {
        "charkit_version": __version__,
        "status": "done" if choice is not None else "running",
        "character": plan.character.name,
        "trigger": plan.character.trigger_text,
        "family": plan.family,
        "model": plan.model,
        "run": plan.run_name,
        "device": str(plan.device),
        "mixed_precision": plan.mixed_precision,
        "optimizer": session.optimizer_name,
        "resumed_from": session.resumed_from,
        "skipped_updates": session.skipped_updates,
        "memory": {
            "base_quantization": plan.quantization.method if plan.quantization else "none",
            "encoders_offloaded": plan.offload_encoders,
            "block_swap": preset.memory.block_swap if session.block_swap is not None else 0,
        },
        "caches": {
            "latents": bool(session.latents and session.latents.cached),
            "text_embeddings": bool(session.texts and session.texts.cached),
            "seconds": round(session.cache_seconds, 3),
        },
        "steps": {"done": session.step, "total": preset.train.steps, "eval_every": preset.eval.every},
        "timing": {"mean_step_seconds": round(sum(steps) / len(steps), 4) if steps else None},
        "dataset": {
            "folder": str(plan.dataset.root),
            "images": len(plan.dataset.train_items),
            "regularisation_images": len(plan.dataset.reg_items),
            "resolution": plan.dataset.resolution,
            "buckets": [f"{w}x{h}: {len(ix)}" for (h, w), ix in plan.dataset.buckets.items()],
        },
        "identity": {
            "backend": info.to_dict() if info else None,
            "references": len(prof.used) if prof else None,
            "baseline_mean": None if prof is None or prof.baseline_mean is None else round(prof.baseline_mean, 4),
        },
        "adherence": {"clip_model": str(plan.clip_model) if plan.clip_model else "unavailable"},
        "notes": list(plan.notes),
        "preset": preset.model_dump(mode="json"),
        "losses": [[int(s), (round(v, 6) if math.isfinite(v) else None)] for s, v in session.losses],
        "baseline": session.baseline.to_dict() if session.baseline is not None else None,
        "checkpoints": [s.to_dict() for s in sorted(session.scores, key=lambda s: s.step)],
        "choice": choice.to_dict() if choice is not None else None,
        "rule": CHOICE_RULE,
        "exports": None
        if export is None
        else {
            "diffusers": export.diffusers.name,
            "kohya": export.kohya.name if export.kohya else None,
            "sha256": export.sha256,
        },
    }


# -------------------------------------------------------------------------------------------- charts


def _scale(values, lo, hi, out_lo, out_hi):
    span = (hi - lo) or 1.0
    return [out_lo + (v - lo) / span * (out_hi - out_lo) for v in values]


def loss_chart(losses: list, *, width: int = 640, height: int = 200, pad: int = 36) -> dict:
    """Polyline points of the loss curve (finite losses), with axis labels."""
    pts = [(s, v) for s, v in losses if v is not None]
    if not pts:
        return {"width": width, "height": height, "points": "", "labels": []}
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(ys), max(ys)
    px = _scale(xs, x0, x1, pad, width - 8)
    py = _scale(ys, y0, y1, height - pad, 8)
    return {
        "width": width,
        "height": height,
        "points": " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(px, py)),
        "labels": [
            {"x": 4, "y": 14, "text": f"{y1:.4g}"},
            {"x": 4, "y": height - pad, "text": f"{y0:.4g}"},
            {"x": pad, "y": height - 8, "text": f"step {x0}"},
            {"x": width - 90, "y": height - 8, "text": f"step {x1}"},
        ],
    }


def identity_chart(
    checkpoints: list[dict],
    chosen: int | None,
    threshold: float | None,
    *,
    key: str = "identity",
    width: int = 640,
    height: int = 200,
    pad: int = 36,
    reference: float | None = None,
) -> dict:
    """Bars of ``key`` (mean identity, prompt similarity or memorised share) per checkpoint, a grey stub where it
    was not measured, a dashed line at ``threshold`` (and a dotted one at the baseline's ``reference``)."""
    n = max(len(checkpoints), 1)
    slot = (width - pad - 8) / n
    bars = []
    for i, c in enumerate(checkpoints):
        v = c.get(key)
        h = 0 if v is None else max(0.0, min(1.0, v)) * (height - pad - 8)
        bars.append(
            {
                "x": round(pad + i * slot + slot * 0.15, 1),
                "w": round(slot * 0.7, 1),
                "y": round(height - pad - (h if v is not None else 4), 1),
                "h": round(h if v is not None else 4, 1),
                "cls": "chosen"
                if c["step"] == chosen
                else ("noface" if v is None else ("base" if c.get("baseline") else "bar")),
                "label": "base" if c.get("baseline") else f"{c['step']}",
                "value": ("no face" if key == "identity" else "n/a") if v is None else f"{v:.3f}",
                "lx": round(pad + i * slot + slot / 2, 1),
            }
        )
    y = lambda v: None if v is None else round(height - pad - max(0.0, min(1.0, v)) * (height - pad - 8), 1)
    return {
        "width": width,
        "height": height,
        "bars": bars,
        "threshold_y": y(threshold),
        "threshold": None if threshold is None else round(threshold, 3),
        "reference_y": y(reference),
        "reference": None if reference is None else round(reference, 3),
        "base": height - pad,
    }


def verdicts(report: dict) -> list[dict]:
    """One row per checkpoint: its gains and why it won or lost (from the choice record)."""
    choice = report.get("choice") or {}
    excluded = choice.get("excluded", {})
    gains = choice.get("gains", {})
    vs = {c["step"]: c for c in choice.get("comparisons", [])}
    rows = []
    for c in report["checkpoints"]:
        st = c["step"]
        cmp_ = vs.get(st)
        if st == choice.get("step"):
            why = "chosen"
        elif str(st) in excluded:
            why = "out: " + excluded[str(st)]
        elif cmp_ is not None and not cmp_["won"]:
            why = f"within noise of step {cmp_['against']}"
        elif cmp_ is not None:
            why = f"beat step {cmp_['against']}, later beaten"
        else:
            why = "first competitor, later beaten" if choice else ""
        interval = "" if cmp_ is None or cmp_["low"] is None else f"[{cmp_['low']:+.3f}, {cmp_['high']:+.3f}]"
        rows.append({"step": st, "gain": gains.get(str(st)), "vs": cmp_, "interval": interval, "why": why})
    return rows


# ---------------------------------------------------------------------------------------------- html


def _thumb(run_dir: Path, rel: str) -> str | None:
    """A small JPEG of a probe render as a data: URI (the shared, deterministic thumbnail encoder)."""
    from PIL import Image

    p = run_dir / rel
    if not p.is_file():
        return None
    with Image.open(p) as im:
        return data_uri(make_thumbnail(im.convert("RGB"), THUMB_SIDE))


def render_html(report: dict, run_dir: Path) -> str:
    """The self-contained HTML page of a report dict (probe thumbnails read from ``run_dir``)."""
    chosen = report["choice"]["step"] if report.get("choice") else None
    backend = report["identity"]["backend"] or {}
    base = report.get("baseline") or {}
    rows = ([base] if base else []) + report["checkpoints"]
    thumbs = {p["image"]: _thumb(run_dir, p["image"]) for c in rows for p in c["probes"]}
    rise = report["preset"]["eval"].get("max_similarity_rise")
    sim0 = base.get("prompt_similarity")
    return (
        environment("charkit.train")
        .get_template("training_report.html.j2")
        .render(
            r=report,
            loss=loss_chart(report["losses"]),
            ident=identity_chart(rows, chosen, backend.get("threshold"), reference=base.get("identity")),
            diversity=identity_chart(
                rows,
                chosen,
                None if sim0 is None or rise is None else sim0 + rise,
                key="prompt_similarity",
                reference=sim0,
            ),
            memo=identity_chart(rows, chosen, report["preset"]["eval"].get("max_memorized"), key="memorized_rate"),
            verdicts=verdicts(report),
            grid=rows,
            thumbs=thumbs,
            chosen=chosen,
        )
    )


def write_report(session, *, choice=None, export=None) -> tuple[Path, Path]:
    """Write both files atomically into the run folder (JSON first; the HTML renders the same dict)."""
    run_dir = Path(session.plan.run_dir)
    report = build_report(session, choice=choice, export=export)
    html = render_html(report, run_dir)
    atomic_write_json(run_dir / REPORT_JSON, report)
    atomic_write_text(run_dir / REPORT_HTML, html)
    return run_dir / REPORT_JSON, run_dir / REPORT_HTML

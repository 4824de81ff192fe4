"""Checkpoint evaluation: probe renders, identity and prompt-adherence scores, and the checkpoint choice.

At step 0 (the base model, no LoRA: the baseline) and at every evaluation step the model renders a
fixed probe set (the preset's prompts x seeds, some of them unlike the training captions). Each render
is scored

* for **identity** with the identity engine against the character's reference profile
  (``similarity``, higher = more alike, ``>= threshold`` = same person),
* for **overfitting** without any extra model (:mod:`charkit.train.overfit`): is it a near copy of a
  training photo, and how alike are the probes of different prompts, and
* for **prompt adherence** with a CLIP score (``100 x cosine(image, text)``, floored at 0) when a
  CLIP model is configured; otherwise adherence is recorded as unavailable.

:func:`choose_checkpoint` then picks the checkpoint to ship (rule in :data:`CHOICE_RULE`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CharkitError

#: The checkpoint choice rule, as written into reports and docs/training.md.
CHOICE_RULE = (
    "1. Gates: a checkpoint competes only if at least min_face_rate of its probes show a face, at most "
    "max_memorized of them are near copies of a training photo, its probes of different prompts are not more alike "
    "than the no-LoRA baseline's by more than max_similarity_rise, and (when every checkpoint has a CLIP score) its "
    "mean CLIP score is within adherence_tolerance points of the best. 2. Noise: walking the competitors in step "
    "order, a later checkpoint replaces the one chosen so far only if its identity gain over it, on the same probes, "
    "is above 0 at the lower end of a bootstrap interval (eval.confidence); otherwise the difference is "
    "probe-to-probe noise and the earlier, less trained checkpoint stays. 3. Fallbacks: if checkpoints show faces "
    "but every one fails a gate, the earliest with faces is chosen (the least overfitted); if none shows faces, "
    "identity cannot be measured and the last checkpoint is chosen. The report gives every checkpoint's identity "
    "gain over the step-0 baseline."
)
#: bootstrap resamples of the probes (fixed seed: the same scores always give the same choice)
BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class ProbeSpec:
    """One probe render: the prompt as rendered, the text CLIP scores it against, and its seed."""

    index: int
    prompt: str
    text: str
    seed: int

    @property
    def name(self) -> str:
        return f"p{self.index:02d}-s{self.seed}"


@dataclass
class ProbeResult:
    prompt: str
    seed: int
    image: str  # path relative to the run folder
    status: str  # identity status: pass | drift | no_face | error
    similarity: float | None
    adherence: float | None
    phash: str | None = None  # perceptual hash of the render (hex)
    memorized: bool | None = None  # a near copy of a training photo (None: not checked)
    nearest: str | None = None  # the training photo closest in picture
    copy_face: float | None = None  # face similarity to it
    copy_hash: float | None = None  # perceptual-hash similarity to it
    embedding: object = field(default=None, repr=False, compare=False)  # the scored face (not saved)

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "image": self.image,
            "status": self.status,
            "similarity": _r(self.similarity),
            "adherence": _r(self.adherence),
            "phash": self.phash,
            "memorized": self.memorized,
            "nearest": self.nearest,
            "copy_face": _r(self.copy_face),
            "copy_hash": _r(self.copy_hash),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ProbeResult:
        return cls(
            d["prompt"],
            int(d["seed"]),
            d["image"],
            d["status"],
            d.get("similarity"),
            d.get("adherence"),
            phash=d.get("phash"),
            memorized=d.get("memorized"),
            nearest=d.get("nearest"),
            copy_face=d.get("copy_face"),
            copy_hash=d.get("copy_hash"),
        )


@dataclass
class CheckpointScore:
    """How one checkpoint did on the probe set."""

    step: int
    identity: float | None  # mean similarity over the probes that show the character's face
    face_rate: float  # share of probes with a face
    pass_rate: float  # share of probes at or above the identity threshold
    adherence: float | None  # mean CLIP score, None when unavailable
    loss: float | None = None  # mean training loss since the previous evaluation
    checkpoint: str = ""  # folder, relative to the run folder ("" for the step-0 baseline)
    probes: list[ProbeResult] = field(default_factory=list)
    prompt_similarity: float | None = None  # mean look-alike of probes of different prompts (same seed)
    memorized_rate: float | None = None  # share of probes that are near copies of a training photo
    baseline: bool = False  # step 0: the base model without the LoRA

    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "baseline": self.baseline,
            "identity": _r(self.identity),
            "face_rate": _r(self.face_rate),
            "pass_rate": _r(self.pass_rate),
            "adherence": _r(self.adherence),
            "prompt_similarity": _r(self.prompt_similarity),
            "memorized_rate": _r(self.memorized_rate),
            "loss": _r(self.loss, 6),
            "checkpoint": self.checkpoint,
            "probes": [p.to_dict() for p in self.probes],
        }

    @classmethod
    def from_dict(cls, d: dict) -> CheckpointScore:
        return cls(
            step=int(d["step"]),
            identity=d.get("identity"),
            face_rate=float(d.get("face_rate") or 0.0),
            pass_rate=float(d.get("pass_rate") or 0.0),
            adherence=d.get("adherence"),
            loss=d.get("loss"),
            checkpoint=d.get("checkpoint", ""),
            probes=[ProbeResult.from_dict(p) for p in d.get("probes", [])],
            prompt_similarity=d.get("prompt_similarity"),
            memorized_rate=d.get("memorized_rate"),
            baseline=bool(d.get("baseline", False)),
        )


@dataclass
class Comparison:
    """A later checkpoint against the one chosen so far: identity gain and its bootstrap interval."""

    step: int
    against: int
    gain: float
    low: float | None  # None: too few probes with faces to bootstrap (plain comparison of the means)
    high: float | None
    won: bool

    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "against": self.against,
            "gain": _r(self.gain),
            "low": _r(self.low),
            "high": _r(self.high),
            "won": self.won,
        }


@dataclass
class CheckpointChoice:
    """The chosen checkpoint and why."""

    step: int
    reason: str
    rule: str
    candidates: list[int]  # steps that passed every gate
    ranked: list[int]  # candidates by mean identity, best first (informational: noise decides, see comparisons)
    measured: bool  # False when identity could not be measured (no faces) and the fallback was used
    excluded: dict[int, str] = field(default_factory=dict)  # step -> the gate it failed
    comparisons: list[Comparison] = field(default_factory=list)
    baseline_identity: float | None = None
    gains: dict[int, float | None] = field(default_factory=dict)  # step -> identity gain over the baseline
    gain_interval: tuple[float, float] | None = None  # the chosen one's gain over the baseline, bootstrapped

    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "reason": self.reason,
            "rule": self.rule,
            "candidates": list(self.candidates),
            "ranked": list(self.ranked),
            "identity_measured": self.measured,
            "excluded": {str(k): v for k, v in self.excluded.items()},
            "comparisons": [c.to_dict() for c in self.comparisons],
            "baseline_identity": _r(self.baseline_identity),
            "gains": {str(k): _r(v) for k, v in self.gains.items()},
            "gain_interval": None if self.gain_interval is None else [_r(v) for v in self.gain_interval],
        }


def _r(v, nd: int = 4):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), nd)


# ------------------------------------------------------------------------------------------ probes


def probe_specs(prompts: list[str], seeds: list[int], *, trigger: str, class_word: str) -> list[ProbeSpec]:
    """Expand ``{trigger}`` / ``{class}`` in every prompt; the CLIP text leaves the trigger out (CLIP can't know it).

    >>> [s.prompt for s in probe_specs(["a photo of {trigger} {class}"], [1], trigger="ohwx", class_word="man")]
    ['a photo of ohwx man']
    """
    out = []
    for i, p in enumerate(prompts):
        prompt = " ".join(p.replace("{trigger}", trigger).replace("{class}", class_word).split())
        text = " ".join(p.replace("{trigger}", "").replace("{class}", class_word).split())
        for s in seeds:
            out.append(ProbeSpec(index=i, prompt=prompt, text=text, seed=int(s)))
    return out


def score_probes(
    images, specs: list[ProbeSpec], image_paths: list[str], *, profile, backend, clip=None
) -> list[ProbeResult]:
    """Score probe renders (PIL images or files) for identity and, with ``clip``, prompt adherence."""
    from ..identity import score_image

    out = []
    for img, spec, rel in zip(images, specs, image_paths):
        s = score_image(img, [profile], backend)
        adherence = clip.score(img, spec.text) if clip is not None else None
        out.append(ProbeResult(spec.prompt, spec.seed, rel, s.status, s.similarity, adherence))
        face = s.matches[0].face if s.matches else None
        # for the memorisation guard (charkit.train.overfit); embedded again there when absent
        out[-1].embedding = getattr(s.faces[face], "embedding", None) if face is not None else None
    return out


def summarize(
    step: int, probes: list[ProbeResult], *, loss: float | None = None, checkpoint: str = "", baseline: bool = False
) -> CheckpointScore:
    """Aggregate probe results into a :class:`CheckpointScore` (identity, face rate, guards, adherence)."""
    from .overfit import memorized_rate, prompt_similarity

    n = max(len(probes), 1)
    sims = [p.similarity for p in probes if p.similarity is not None]
    adh = [p.adherence for p in probes]
    return CheckpointScore(
        step=step,
        identity=sum(sims) / len(sims) if sims else None,
        face_rate=len(sims) / n,
        pass_rate=sum(p.status == "pass" for p in probes) / n,
        adherence=(sum(adh) / len(adh)) if adh and all(a is not None for a in adh) else None,
        loss=loss,
        checkpoint=checkpoint,
        probes=probes,
        prompt_similarity=prompt_similarity(probes),
        memorized_rate=memorized_rate(probes),
        baseline=baseline,
    )


# ------------------------------------------------------------------------------------------ choice


def identity_gain(
    later: CheckpointScore, earlier: CheckpointScore, *, confidence: float = 0.9
) -> tuple[float, float | None, float | None]:
    """``later``'s mean identity minus ``earlier``'s, with a bootstrap interval over the probes.

    Paired over the probes (same prompt and seed) that show a face in both; with fewer than 3 such pairs
    the two sets are resampled on their own; with fewer than 2 faces on a side, or no probe records at all,
    the interval is None (the plain difference of the means).

    >>> a = CheckpointScore(1, 0.50, 1.0, 1.0, None)
    >>> identity_gain(CheckpointScore(2, 0.60, 1.0, 1.0, None), a)
    (0.1, None, None)
    """
    gain = float(later.identity) - float(earlier.identity)
    key = lambda p: (p.prompt, p.seed)
    mine = {key(p): p.similarity for p in later.probes if p.similarity is not None}
    theirs = {key(p): p.similarity for p in earlier.probes if p.similarity is not None}
    shared = sorted(set(mine) & set(theirs))
    rng = np.random.default_rng(0)
    q = ((1 - confidence) / 2, (1 + confidence) / 2)
    if len(shared) >= 3:
        diff = np.asarray([mine[k] - theirs[k] for k in shared])
        boot = diff[rng.integers(0, len(diff), (BOOTSTRAP_SAMPLES, len(diff)))].mean(axis=1)
    elif len(mine) >= 2 and len(theirs) >= 2:
        a, b = np.asarray(list(mine.values())), np.asarray(list(theirs.values()))
        boot = a[rng.integers(0, len(a), (BOOTSTRAP_SAMPLES, len(a)))].mean(axis=1) - b[
            rng.integers(0, len(b), (BOOTSTRAP_SAMPLES, len(b)))
        ].mean(axis=1)
    else:
        return round(gain, 6), None, None
    low, high = np.quantile(boot, q)
    return round(gain, 6), float(low), float(high)


def gate(
    s: CheckpointScore,
    baseline: CheckpointScore | None,
    *,
    min_face_rate: float,
    max_memorized: float,
    max_similarity_rise: float,
    best_adherence: float | None,
    adherence_tolerance: float,
) -> str | None:
    """The first gate ``s`` fails (a short reason), or None when it competes."""
    if s.identity is None or s.face_rate < min_face_rate - 1e-9:
        return f"faces in {s.face_rate:.0%} of probes (< {min_face_rate:.0%})"
    if s.memorized_rate is not None and s.memorized_rate > max_memorized + 1e-9:
        return f"{s.memorized_rate:.0%} of probes are copies of training photos (> {max_memorized:.0%})"
    if baseline is not None and baseline.prompt_similarity is not None and s.prompt_similarity is not None:
        rise = s.prompt_similarity - baseline.prompt_similarity
        if rise > max_similarity_rise + 1e-9:
            return f"probes of different prompts look alike ({s.prompt_similarity:.2f}, baseline {baseline.prompt_similarity:.2f})"
    if best_adherence is not None and s.adherence < best_adherence - adherence_tolerance - 1e-9:
        return f"CLIP adherence {s.adherence:.2f} (best {best_adherence:.2f} - {adherence_tolerance:g})"
    return None


def choose_checkpoint(
    scores: list[CheckpointScore],
    *,
    baseline: CheckpointScore | None = None,
    adherence_tolerance: float = 2.0,
    min_face_rate: float = 0.5,
    max_memorized: float = 0.25,
    max_similarity_rise: float = 0.15,
    confidence: float = 0.9,
    saved: list[int] | None = None,
) -> CheckpointChoice:
    """Pick the checkpoint to ship: the earliest that no later one beats beyond probe noise, among those that pass
    the gates (see :data:`CHOICE_RULE`). ``saved``: steps that have checkpoint folders (for the error message).

    >>> a = CheckpointScore(step=100, identity=0.55, face_rate=1.0, pass_rate=1.0, adherence=30.0)
    >>> b = CheckpointScore(step=200, identity=0.62, face_rate=1.0, pass_rate=1.0, adherence=24.0)
    >>> choose_checkpoint([a, b], adherence_tolerance=2.0).step  # b draws the face better but ignores the prompt
    100
    """
    if not scores:
        if saved:
            raise CharkitError(
                f"checkpoints {', '.join(map(str, saved))} were saved but none has probe scores (evals/ missing or "
                "unreadable); run again with --resume to score them"
            )
        raise CharkitError("no checkpoint was saved, so none can be chosen; train for at least eval.every steps")
    scores = sorted((s for s in scores if not s.baseline), key=lambda s: s.step)
    best_adh = max(s.adherence for s in scores) if all(s.adherence is not None for s in scores) else None
    kw = dict(
        min_face_rate=min_face_rate,
        max_memorized=max_memorized,
        max_similarity_rise=max_similarity_rise,
        best_adherence=best_adh,
        adherence_tolerance=adherence_tolerance,
    )
    excluded = {s.step: why for s in scores if (why := gate(s, baseline, **kw)) is not None}
    competing = [s for s in scores if s.step not in excluded]
    base_id = baseline.identity if baseline is not None else None
    gains = {
        s.step: (None if s.identity is None or base_id is None else round(s.identity - base_id, 6)) for s in scores
    }
    chosen, comparisons = _walk(competing, confidence)
    if chosen is not None:
        measured, reason = True, _reason(chosen, competing, comparisons)
    else:
        with_faces = [s for s in scores if s.identity is not None]
        chosen, measured = (with_faces[0], True) if with_faces else (scores[-1], False)
        reason = (
            f"step {chosen.step}: every checkpoint failed a gate ({excluded[chosen.step]} here); chose the earliest "
            "with faces, the least overfitted"
            if with_faces
            else f"step {chosen.step}: no checkpoint showed a face in at least {min_face_rate:.0%} of its probe renders, "
            "so identity could not be measured (a tiny or random model draws no faces); chose the last checkpoint"
        )
    interval = None
    if measured and baseline is not None and base_id is not None and chosen.identity is not None:
        g, lo, hi = identity_gain(chosen, baseline, confidence=confidence)
        interval = None if lo is None else (lo, hi)
        reason += f"; identity gain over the no-LoRA baseline {g:+.3f}" + (
            "" if lo is None else f" [{lo:+.3f}, {hi:+.3f}]"
        )
        if lo is not None and lo <= 0:
            reason += " (within noise: the LoRA may not have learnt the face; train longer or raise the learning rate)"
    return CheckpointChoice(
        step=chosen.step,
        reason=reason,
        rule=CHOICE_RULE,
        candidates=[s.step for s in competing],
        ranked=[s.step for s in sorted(competing, key=lambda s: (-s.identity, s.step))],
        measured=measured,
        excluded=excluded,
        comparisons=comparisons,
        baseline_identity=base_id,
        gains=gains,
        gain_interval=interval,
    )


def _walk(competing: list[CheckpointScore], confidence: float) -> tuple[CheckpointScore | None, list[Comparison]]:
    """The incumbent after walking the competitors in step order (a later one must beat it beyond noise)."""
    chosen, comparisons = None, []
    for s in competing:
        if chosen is None:
            chosen = s
            continue
        gain, low, high = identity_gain(s, chosen, confidence=confidence)
        won = (low > 0) if low is not None else round(s.identity, 4) > round(chosen.identity, 4)
        comparisons.append(Comparison(s.step, chosen.step, gain, low, high, won))
        if won:
            chosen = s
    return chosen, comparisons


def _reason(chosen: CheckpointScore, competing: list[CheckpointScore], comparisons: list[Comparison]) -> str:
    text = (
        f"step {chosen.step}: mean identity {chosen.identity:.4f} (faces in {chosen.face_rate:.0%} of probes) among "
        f"{len(competing)} checkpoint(s) that passed the gates"
    )
    beat = [c for c in comparisons if c.won and c.step == chosen.step]
    if beat:
        c = beat[0]
        text += f"; it beat step {c.against} by {c.gain:+.4f}" + (
            "" if c.low is None else f" (interval [{c.low:+.4f}, {c.high:+.4f}] above 0)"
        )
    held = [c for c in comparisons if not c.won and c.against == chosen.step]
    if held:
        text += "; later step(s) " + ", ".join(str(c.step) for c in held) + " did not beat it beyond probe noise"
    return text


# -------------------------------------------------------------------------------------------- CLIP


class ClipScorer:
    """CLIP score (``100 x max(cosine, 0)``) of an image against a text, with a local transformers CLIPModel."""

    def __init__(self, path: str | os.PathLike, *, device="cpu"):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.path = str(path)
        self.device = torch.device(device)
        try:
            self.model = (
                CLIPModel.from_pretrained(self.path, local_files_only=True, use_safetensors=True).to(self.device).eval()
            )
            self.processor = CLIPProcessor.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise CharkitError(
                f"--clip-model {self.path}: not a loadable CLIP model folder ({' '.join(str(e).split())[:160]}); point it "
                "at a transformers CLIPModel folder with safetensors weights and its processor files"
            ) from None
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    def score(self, image, text: str) -> float:
        import torch

        inputs = self.processor(
            text=[text],
            images=[image],
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.no_grad():
            out = self.model(**inputs)
        img = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
        txt = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
        return float(100.0 * torch.clamp((img * txt).sum(-1), min=0.0)[0])


def resolve_clip_model(configured: str | os.PathLike | None) -> Path | None:
    """The CLIP folder to use: the configured one, else ``$CHARKIT_CLIP_MODEL``, else None (adherence unavailable)."""
    text = str(configured or "") or os.environ.get("CHARKIT_CLIP_MODEL", "")
    if not text:
        return None
    p = Path(text).expanduser()
    if not (p / "config.json").is_file():
        raise CharkitError(
            f"clip model {text!r}: no CLIP model folder there (config.json missing); give a local transformers "
            "CLIPModel folder, or leave eval.clip_model empty to record adherence as unavailable"
        )
    return p

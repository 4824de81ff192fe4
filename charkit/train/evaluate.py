"""Checkpoint evaluation: probe renders, identity and prompt-adherence scores, and the checkpoint choice.

At every evaluation step the current LoRA renders a fixed probe set (the preset's prompts x seeds,
some of them unlike the training captions). Each render is scored

* for **identity** with the identity engine against the character's reference profile
  (``similarity``, higher = more alike, ``>= threshold`` = same person), and
* for **prompt adherence** with a CLIP score (``100 x cosine(image, text)``, floored at 0) when a
  CLIP model is configured; otherwise adherence is recorded as unavailable.

:func:`choose_checkpoint` then picks the checkpoint to ship (rule in :data:`CHOICE_RULE`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CharkitError

#: The checkpoint choice rule, as written into reports and docs/training.md.
CHOICE_RULE = (
    "1. Adherence guard: when every checkpoint has a CLIP score, only checkpoints whose mean CLIP score is within "
    "adherence_tolerance points of the best one compete (a LoRA that draws the face but ignores the prompt is "
    "overfitted). 2. Identity: among those, checkpoints where at least min_face_rate of the probe renders show a "
    "face are ranked by mean identity similarity to the reference centroid; the highest wins, ties (equal to 4 "
    "decimals) go to the earlier step. 3. If no competing checkpoint shows faces often enough, identity cannot be "
    "measured: the last competing checkpoint is chosen and the report says so."
)


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

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "image": self.image,
            "status": self.status,
            "similarity": _r(self.similarity),
            "adherence": _r(self.adherence),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ProbeResult:
        return cls(d["prompt"], int(d["seed"]), d["image"], d["status"], d.get("similarity"), d.get("adherence"))


@dataclass
class CheckpointScore:
    """How one checkpoint did on the probe set."""

    step: int
    identity: float | None  # mean similarity over the probes that show the character's face
    face_rate: float  # share of probes with a face
    pass_rate: float  # share of probes at or above the identity threshold
    adherence: float | None  # mean CLIP score, None when unavailable
    loss: float | None = None  # mean training loss since the previous evaluation
    checkpoint: str = ""  # folder, relative to the run folder
    probes: list[ProbeResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "identity": _r(self.identity),
            "face_rate": _r(self.face_rate),
            "pass_rate": _r(self.pass_rate),
            "adherence": _r(self.adherence),
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
        )


@dataclass
class CheckpointChoice:
    """The chosen checkpoint and why."""

    step: int
    reason: str
    rule: str
    candidates: list[int]  # steps that passed the adherence guard
    ranked: list[int]  # candidates that competed on identity, best first
    measured: bool  # False when identity could not be measured (no faces) and the fallback was used

    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "reason": self.reason,
            "rule": self.rule,
            "candidates": list(self.candidates),
            "ranked": list(self.ranked),
            "identity_measured": self.measured,
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
    return out


def summarize(
    step: int, probes: list[ProbeResult], *, loss: float | None = None, checkpoint: str = ""
) -> CheckpointScore:
    """Aggregate probe results into a :class:`CheckpointScore`."""
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
    )


# ------------------------------------------------------------------------------------------ choice


def choose_checkpoint(
    scores: list[CheckpointScore], *, adherence_tolerance: float = 2.0, min_face_rate: float = 0.5
) -> CheckpointChoice:
    """Pick the checkpoint to ship: best identity among those that still follow the prompt (see :data:`CHOICE_RULE`).

    >>> a = CheckpointScore(step=100, identity=0.55, face_rate=1.0, pass_rate=1.0, adherence=30.0)
    >>> b = CheckpointScore(step=200, identity=0.62, face_rate=1.0, pass_rate=1.0, adherence=24.0)
    >>> choose_checkpoint([a, b], adherence_tolerance=2.0).step  # b draws the face better but ignores the prompt
    100
    """
    if not scores:
        raise CharkitError("no checkpoint was evaluated: set eval.every to at most train.steps")
    scores = sorted(scores, key=lambda s: s.step)
    adherence_known = all(s.adherence is not None for s in scores)
    if adherence_known:
        best_adh = max(s.adherence for s in scores)
        candidates = [s for s in scores if s.adherence >= best_adh - adherence_tolerance - 1e-9]
        guard = f"adherence within {adherence_tolerance:g} of the best ({best_adh:.2f})"
    else:
        candidates = list(scores)
        guard = "no adherence guard (CLIP score unavailable)"
    competing = [s for s in candidates if s.identity is not None and s.face_rate >= min_face_rate - 1e-9]
    # Highest identity first; equal (to 4 decimals) -> earlier step.
    ranked = sorted(competing, key=lambda s: (-round(s.identity, 4), s.step))
    if ranked:
        best = ranked[0]
        reason = (
            f"step {best.step}: highest mean identity {best.identity:.4f} (faces in {best.face_rate:.0%} of probes) "
            f"among {len(ranked)} checkpoint(s) with {guard}"
        )
        measured = True
    else:
        best = candidates[-1]
        reason = (
            f"step {best.step}: no checkpoint showed a face in at least {min_face_rate:.0%} of its probe renders, so "
            f"identity could not be measured (a tiny or random model draws no faces); chose the last checkpoint with {guard}"
        )
        measured = False
    return CheckpointChoice(
        step=best.step,
        reason=reason,
        rule=CHOICE_RULE,
        candidates=[s.step for s in candidates],
        ranked=[s.step for s in ranked],
        measured=measured,
    )


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

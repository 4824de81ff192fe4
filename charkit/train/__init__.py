"""Identity-aware LoRA training (``charkit train``).

    result = train_lora("characters/alice", model="runwayml/stable-diffusion-v1-5",
                        preset="training/sd15-lora.toml", device="cuda")

Lifecycle (:mod:`charkit.train.loop`)::

    check_inputs -> load -> cache -> train_steps (step-0 baseline, checkpoint + evaluate) -> choose -> export

Modules: ``config`` (presets), ``data`` (dataset, epochs, regularisation images, batches, caches),
``checkpoints`` (crash-safe saves, resume), ``evaluate`` (probe renders, identity / adherence,
:func:`choose_checkpoint`), ``overfit`` (memorisation and prompt-diversity guards), ``optim``
(optimizers, LR schedules), ``offload`` (quantised base, encoders off the GPU, block swap),
``memory`` (``charkit train --plan``), ``export`` (diffusers + kohya files, modelspec), ``report``
(training_report.json/.html), ``cli``. Family-specific LoRA targets and losses live in
``charkit/families/<family>/lora.py``.
"""

from __future__ import annotations

from .config import TrainPreset, apply_overrides, load_preset, parse_preset
from .evaluate import CHOICE_RULE, CheckpointChoice, CheckpointScore, ProbeResult, choose_checkpoint

__all__ = [
    "CHOICE_RULE",
    "CheckpointChoice",
    "CheckpointScore",
    "NonFiniteLossError",
    "ProbeResult",
    "TrainPreset",
    "TrainResult",
    "apply_overrides",
    "check_inputs",
    "load_preset",
    "parse_preset",
    "train_lora",
    "choose_checkpoint",
]


def __getattr__(name):
    # The training loop imports torch/diffusers pieces: load it only when asked for.
    if name in ("train_lora", "check_inputs", "TrainResult", "NonFiniteLossError", "TrainSession", "TrainPlan"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(name)

"""Optimizers and learning-rate schedules of a training preset.

=============  ==============================================  ==================================
name           what                                            state per LoRA parameter
=============  ==============================================  ==================================
``adamw``      ``torch.optim.AdamW``                           2 x fp32 (8 bytes)
``adamw8bit``  bitsandbytes ``AdamW8bit`` (CUDA only)          2 x 8 bit (2 bytes)
``prodigy``    prodigyopt ``Prodigy`` (learning-rate free)     4 x fp32 (16 bytes)
``adafactor``  ``torch.optim.Adafactor`` (factored moments)    about 1 byte
=============  ==============================================  ==================================

``adamw8bit`` without CUDA or without bitsandbytes falls back to torch AdamW *loudly*: the note goes to
the console and into the report. ``prodigy`` without prodigyopt installed is an error before anything
loads (:func:`check_optimizer`).
"""

from __future__ import annotations

import importlib.util

import torch

from ..errors import CharkitError

#: bytes of optimizer state per trained parameter (the memory plan reads it)
STATE_BYTES = {"adamw": 8.0, "adamw8bit": 2.0, "prodigy": 16.0, "adafactor": 1.0}


def check_optimizer(name: str, device: torch.device) -> str | None:
    """Refuse an optimizer that cannot run (a one-line error), or return the fallback note of one that will not.

    >>> check_optimizer("adamw8bit", torch.device("cpu"))
    'optimizer adamw8bit: 8-bit AdamW needs CUDA; training with torch AdamW instead (2 x fp32 state per parameter)'
    """
    if name == "prodigy" and importlib.util.find_spec("prodigyopt") is None:
        raise CharkitError(
            "optimizer.name 'prodigy' needs the prodigyopt package: pip install 'charkit[gpu]' (or prodigyopt), "
            "or choose adamw"
        )
    if name != "adamw8bit":
        return None
    why = None
    if device.type != "cuda":
        why = "8-bit AdamW needs CUDA"
    elif importlib.util.find_spec("bitsandbytes") is None:
        why = "8-bit AdamW needs bitsandbytes (pip install 'charkit[gpu]')"
    return (
        None
        if why is None
        else f"optimizer adamw8bit: {why}; training with torch AdamW instead (2 x fp32 state per parameter)"
    )


def make_optimizer(preset, groups: list[dict], device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """The preset's optimizer over ``groups`` and the name of the one really used (after a fallback)."""
    o = preset.optimizer
    kw = dict(betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    name = o.name if check_optimizer(o.name, device) is None else "adamw"
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **kw), name
    if name == "prodigy":
        from prodigyopt import Prodigy

        # kohya's and the diffusers examples' settings for LoRA
        return Prodigy(groups, decouple=True, use_bias_correction=True, safeguard_warmup=True, **kw), name
    if name == "adafactor":
        return torch.optim.Adafactor(groups, weight_decay=o.weight_decay), name
    return torch.optim.AdamW(groups, **kw), name


def lr_scheduler(preset, optimizer):
    """diffusers' schedule of the preset (warm-up, then constant, linear decay or cosine)."""
    from diffusers.optimization import get_scheduler

    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[preset.optimizer.scheduler]
    return get_scheduler(
        name, optimizer, num_warmup_steps=preset.optimizer.warmup_steps, num_training_steps=preset.train.steps
    )


def optimizer_state_to_params(optimizer) -> None:
    """Move every state tensor to its parameter's device (after a checkpoint was restored before placement)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for k, v in optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.device != p.device and v.dim() > 0:
                    optimizer.state[p][k] = v.to(p.device)

"""SD1.5 LoRA training: text conditioning and the denoising loss (adapter targets: ``SPEC.lora_targets``).

The loss is the one of diffusers' ``train_text_to_image_lora.py``: DDPM noise at a uniform random
timestep, the UNet predicts the noise (``epsilon``) or the velocity (``v_prediction``), whichever the
model's scheduler config says, with optional offset noise and Min-SNR weighting, and per-sample weights
(``batch.weights``: regularisation images count ``prior_loss_weight``). Every random draw takes the
caller's ``generator`` so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def noise_scheduler(pipe):
    """A DDPM scheduler with the model's training schedule (a copy: the pipeline's own is mutated by sampling)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def prediction_type(scheduler) -> str:
    return scheduler.config.get("prediction_type", "epsilon")


def encode_text(pipe, captions: list[str], *, device) -> dict[str, torch.Tensor]:
    """CLIP hidden states exactly as the pipeline computes them at inference (gradients flow when the encoder trains)."""
    prompt_embeds, _ = pipe.encode_prompt(captions, device, 1, False)
    return {"prompt_embeds": prompt_embeds}


def text_shapes(denoiser_config, batch_size: int) -> dict[str, tuple[int, ...]]:
    """Shapes of what :func:`encode_text` returns (the memory plan runs the loss on empty tensors of them)."""
    return {"prompt_embeds": (batch_size, 77, denoiser_config.cross_attention_dim)}


def scale_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents to the UNet's scale."""
    return latents * pipe.vae.config.scaling_factor


def training_loss(pipe, denoiser, scheduler, batch, *, loss_cfg, generator: torch.Generator) -> torch.Tensor:
    """Mean denoising loss of one batch (``batch.latents`` already scaled, ``batch.text`` from :func:`encode_text`)."""
    latents = batch.latents
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    if loss_cfg.noise_offset:
        noise = noise + loss_cfg.noise_offset * torch.randn((b, latents.shape[1], 1, 1), generator=generator).to(
            latents
        )
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {kind!r} in the scheduler config")
    pred = denoiser(noisy, timesteps, batch.text["prompt_embeds"], return_dict=False)[0]
    return weighted_mse(pred.float(), target.float(), scheduler, timesteps, kind, loss_cfg.snr_gamma, batch.weights)


def weighted_mse(pred, target, scheduler, timesteps, kind: str, snr_gamma: float, sample_weights=None) -> torch.Tensor:
    """MSE with Min-SNR-gamma weighting (Hang et al. 2023, as in the diffusers examples) and per-sample weights."""
    if not snr_gamma and sample_weights is None:
        return F.mse_loss(pred, target, reduction="mean")
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=list(range(1, pred.ndim)))
    if snr_gamma:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(scheduler, timesteps)
        weights = torch.clamp(snr, max=snr_gamma)
        per_sample = per_sample * (weights / snr if kind == "epsilon" else weights / (snr + 1))
    if sample_weights is not None:
        per_sample = per_sample * sample_weights.to(per_sample)
    return per_sample.mean()

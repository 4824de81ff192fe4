"""SD3 LoRA training: text conditioning of the MMDiT transformer and the rectified-flow loss.

As in diffusers' ``train_dreambooth_lora_sd3.py``: a timestep drawn from the configured density
(logit-normal by default), ``x_t = (1 - sigma) x_0 + sigma * noise``, the transformer predicts the
velocity ``noise - x_0``. With ``loss.precondition_outputs`` (the default, as in that script) the
prediction is turned into a clean-latent estimate ``x_t - sigma * v`` and compared with ``x_0``
(Karras et al. preconditioning: the same minimiser, each timestep weighted by sigma squared).
Text embeddings (two CLIP encoders + T5) come from the pipeline's own ``encode_prompt`` and are
cached; the text encoders are not trained for SD3.
"""

from __future__ import annotations

import torch


def noise_scheduler(pipe):
    """The model's flow-matching schedule (a fresh copy: sampling calls set_timesteps on the pipeline's)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)


def prediction_type(scheduler) -> str:
    return "flow"


def encode_text(pipe, captions: list[str], *, device) -> dict[str, torch.Tensor]:
    prompt_embeds, _, pooled, _ = pipe.encode_prompt(
        prompt=captions,
        prompt_2=None,
        prompt_3=None,
        device=device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
    )
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}


def text_shapes(denoiser_config, batch_size: int) -> dict[str, tuple[int, ...]]:
    """Shapes of what :func:`encode_text` returns: 77 CLIP tokens + the pipeline's 256 T5 tokens."""
    c = denoiser_config
    return {
        "prompt_embeds": (batch_size, 77 + 256, c.joint_attention_dim),
        "pooled_prompt_embeds": (batch_size, c.pooled_projection_dim),
    }


def scale_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    shift = pipe.vae.config.get("shift_factor") or 0.0
    return (latents - shift) * pipe.vae.config.scaling_factor


def sample_sigmas(scheduler, batch_size: int, *, loss_cfg, generator: torch.Generator, device):
    """Timesteps and their sigmas from the configured density over the training schedule."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    u = compute_density_for_timestep_sampling(
        loss_cfg.timestep_sampling,
        batch_size,
        loss_cfg.logit_mean,
        loss_cfg.logit_std,
        loss_cfg.mode_scale,
        generator=generator,
    )
    n = scheduler.config.num_train_timesteps
    idx = (u * n).long().clamp(0, n - 1)
    return scheduler.timesteps[idx].to(device), scheduler.sigmas[idx].to(device)


def training_loss(pipe, denoiser, scheduler, batch, *, loss_cfg, generator: torch.Generator) -> torch.Tensor:
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    latents = batch.latents
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    timesteps, sigmas = sample_sigmas(scheduler, b, loss_cfg=loss_cfg, generator=generator, device=latents.device)
    sigmas = sigmas.view(b, 1, 1, 1).to(latents.dtype)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    pred = denoiser(
        hidden_states=noisy,
        timestep=timesteps,
        encoder_hidden_states=batch.text["prompt_embeds"],
        pooled_projections=batch.text["pooled_prompt_embeds"],
        return_dict=False,
    )[0]
    if loss_cfg.precondition_outputs is not False:  # diffusers' --precondition_outputs (default 1)
        pred, target = pred * (-sigmas) + noisy, latents
    else:
        target = noise - latents
    weighting = compute_loss_weighting_for_sd3(loss_cfg.weighting, sigmas.float())
    err = weighting * (pred.float() - target.float()) ** 2
    per_sample = err.reshape(b, -1).mean(dim=1)
    if batch.weights is not None:
        per_sample = per_sample * batch.weights.to(per_sample)
    return per_sample.mean()

"""Single-file checkpoints of a (tiny) Flux or SD3 pipeline, laid out like the released files.

diffusers reads these layouts (``from_single_file``) but ships no writer; tests need real-layout files to
load, so these write them from a pipeline:

* :func:`write_bfl_flux`: ``flux1-dev.safetensors`` from black-forest-labs: the transformer alone, BFL
  names, no prefix. ``full=True``: the ComfyUI / Civitai "all in one" checkpoint (Comfy-Org's
  ``flux1-dev-fp8.safetensors``): ``model.diffusion_model.`` + ``text_encoders.clip_l.transformer.`` +
  ``text_encoders.t5xxl.transformer.`` + ``vae.`` (LDM VAE names), the prefixes of ComfyUI's
  ``supported_models.Flux``.
* :func:`write_sd3_single_file`: ``sd3.5_medium.safetensors`` from stabilityai (``model.diffusion_model.``
  MMDiT + ``first_stage_model.`` VAE); ``with_text_encoders=True`` adds ``text_encoders.clip_l`` /
  ``clip_g`` / ``t5xxl`` ``.transformer.`` in transformers' names, like ``sd3_medium_incl_clips_t5xxlfp16``.
  CLIP-L is stored without its ``text_projection``: SD3 uses its unprojected pooled output and diffusers
  sets an identity projection when it reads one.
* :func:`write_sd3_transformer`: the MMDiT alone, no prefix (Civitai / ComfyUI ``diffusion_models/``).

Real releases are bf16/fp16; these keep the pipeline's dtype so tests can compare outputs tightly.

>>> write_bfl_flux(tmp / "flux1-tiny.safetensors", get_family("flux").tiny_pipeline())  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..families.flux.bfl import to_bfl
from ..families.ldm import clip_to_ldm, vae_to_ldm
from ..families.sd3.sai import to_sai
from .tinyparts import save_safetensors


def _hf(model: torch.nn.Module, *, text_model: bool, projection: bool = True) -> dict[str, torch.Tensor]:
    """transformers state dict as single files store it (CLIP under ``text_model.``; T5 with both ``shared`` and
    ``encoder.embed_tokens``: diffusers' single-file T5 loader does not re-tie them)."""
    sd = model.state_dict()
    if text_model:
        sd = {(k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}"): v for k, v in sd.items()}
        if not projection:
            sd = {k: v for k, v in sd.items() if not k.startswith("text_projection")}
    return sd


def _save(path: str | os.PathLike, sd: dict[str, torch.Tensor]) -> Path:
    path = Path(path)
    save_safetensors(path, {k: v.detach().clone().contiguous() for k, v in sd.items()})
    return path


def write_bfl_flux(path: str | os.PathLike, pipe, *, full: bool = False) -> Path:
    """A FluxPipeline's transformer in BFL's ``flux1-dev.safetensors`` layout (``full``: the all-in-one file)."""
    dit = to_bfl(pipe.transformer.state_dict())
    if not full:
        return _save(path, dit)
    out = {f"model.diffusion_model.{k}": v for k, v in dit.items()}
    out.update(
        {f"text_encoders.clip_l.transformer.{k}": v for k, v in clip_to_ldm(pipe.text_encoder.state_dict()).items()}
    )
    out.update(
        {f"text_encoders.t5xxl.transformer.{k}": v for k, v in _hf(pipe.text_encoder_2, text_model=False).items()}
    )
    out.update({f"vae.{k}": v for k, v in vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config).items()})
    return _save(path, out)


def write_sd3_single_file(path: str | os.PathLike, pipe, *, with_text_encoders: bool = True) -> Path:
    """A StableDiffusion3Pipeline as Stability's single file (MMDiT + VAE, optionally the three text encoders)."""
    out = {f"model.diffusion_model.{k}": v for k, v in to_sai(pipe.transformer.state_dict()).items()}
    out.update({f"first_stage_model.{k}": v for k, v in vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config).items()})
    if with_text_encoders:
        encoders = (
            ("clip_l", pipe.text_encoder, dict(text_model=True, projection=False)),
            ("clip_g", pipe.text_encoder_2, dict(text_model=True)),
            ("t5xxl", pipe.text_encoder_3, dict(text_model=False)),
        )
        for name, model, kw in encoders:
            out.update({f"text_encoders.{name}.transformer.{k}": v for k, v in _hf(model, **kw).items()})
    return _save(path, out)


def write_sd3_transformer(path: str | os.PathLike, pipe) -> Path:
    """An SD3 pipeline's MMDiT alone in Stability's names (no prefix)."""
    return _save(path, to_sai(pipe.transformer.state_dict()))

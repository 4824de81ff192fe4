"""Flux / SD3 single files as Black Forest Labs, Stability and Civitai ship them: the transformer alone, or all in one.

diffusers' ``from_single_file(config=folder)`` wants every component inside the file: BFL's ``flux1-dev.safetensors``
and most Civitai Flux / SD3 checkpoints hold only the transformer, which is a ``SingleFileComponentError``; and its
BFL reader splits the fused layers at FLUX.1's width only. Here the config folder (a diffusers folder or cached hub
id of the family) gives the architecture, and the file the weights of every part it holds:

* the transformer (``model.diffusion_model.`` or no prefix), split back with the family's name map
  (``flux/bfl.py``, ``sd3/sai.py``) into a model built from the config's ``transformer/config.json``;
* text encoders and VAE under ComfyUI's prefixes (``SPEC.single_file_parts``), the VAE through diffusers' own
  LDM converter; what the file lacks loads from the config folder.

>>> pipe = load_original_single_file(get_spec("flux"), "flux1-dev.safetensors", config="models/FLUX.1-dev",
...                                  dtype=torch.bfloat16)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..errors import CharkitError
from .detect import safetensors_keys
from .registry import family_part
from .spec import FamilySpec

#: prefix of the denoiser in all-in-one files (ComfyUI's "model.diffusion_model.")
DENOISER_PREFIX = "model.diffusion_model."


def file_parts(spec: FamilySpec, keys) -> dict[str, str]:
    """``component -> key prefix`` of every part a single file holds (the denoiser's prefix may be ``""``).

    >>> file_parts(get_spec("flux"), ["double_blocks.0.img_attn.qkv.weight"])  # doctest: +SKIP
    {'transformer': ''}
    """
    keys = list(keys)
    parts = {c: p for p, c in spec.single_file_parts if any(k.startswith(p) for k in keys)}
    claimed = tuple(parts.values())
    rest = [k for k in keys if not k.startswith(claimed)]
    if any(k.startswith(DENOISER_PREFIX) for k in rest):
        parts[spec.denoiser] = DENOISER_PREFIX
    elif rest:
        parts[spec.denoiser] = ""
    return parts


def _read(path: str, prefix: str, claimed: tuple[str, ...]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        keys = list(f.keys())
        names = [k for k in keys if k.startswith(prefix) and not (prefix == "" and k.startswith(claimed))]
        return {k[len(prefix) :]: f.get_tensor(k) for k in names}


def _load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> torch.nn.Module:
    missing, unexpected = model.load_state_dict(dict(state_dict), strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        kind = "lacks" if missing else "has an unexpected"
        raise CharkitError(
            f"{what}: the file {kind} tensor {first!r} ({len(missing)} missing, {len(unexpected)} unexpected); "
            "is the config folder of the same model (family and size)?"
        )
    return model


def _empty(cls, config: str, subfolder: str, **kw):
    """A model of ``cls`` from ``config/subfolder`` with its parameters on the meta device (filled by the file)."""
    from accelerate import init_empty_weights

    cfg = cls.load_config(config, subfolder=subfolder, **kw) if hasattr(cls, "load_config") else None
    with init_empty_weights():
        if cfg is not None:
            return cls.from_config(cfg)
        from transformers import AutoConfig

        return cls._from_config(AutoConfig.from_pretrained(config, subfolder=subfolder, **kw))


def _denoiser(spec: FamilySpec, index: dict, config: str, tensors, **kw) -> torch.nn.Module:
    import diffusers

    from .namemap import module_shapes

    cls = getattr(diffusers, index[spec.denoiser][1])
    model = _empty(cls, config, spec.denoiser, **kw)
    try:
        state = family_part(spec.name, spec.original_layout).from_original(tensors, module_shapes(model))
    except KeyError as e:
        raise CharkitError(f"{spec.name} transformer: {e.args[0]}; is this a {spec.name} single file?") from None
    return _load_into(model, state, f"{spec.name} transformer")


def _text_encoder(component: str, index: dict, config: str, tensors, **kw) -> torch.nn.Module:
    import transformers

    cls = getattr(transformers, index[component][1])
    model = _empty(cls, config, component, **kw)
    own = set(model.state_dict())
    # CLIP: files say text_model.* (transformers >= 5.6 dropped that prefix); T5: the file may lack the tied copy
    state = {(k if k in own else k.removeprefix("text_model.")): v for k, v in tensors.items()}
    if "shared.weight" in own and "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state["shared.weight"] = state["encoder.embed_tokens.weight"]
    if "encoder.embed_tokens.weight" in own and "encoder.embed_tokens.weight" not in state and "shared.weight" in state:
        state["encoder.embed_tokens.weight"] = state["shared.weight"]
    if "text_projection.weight" in own and "text_projection.weight" not in state:
        # SD3's CLIP-L is stored unprojected: diffusers' reader sets an identity projection, as here
        state["text_projection.weight"] = torch.eye(model.config.projection_dim, model.config.hidden_size)
    return _load_into(model, state, component)


def _vae(index: dict, config: str, tensors, prefix: str, **kw) -> torch.nn.Module:
    import diffusers
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    cls = getattr(diffusers, index["vae"][1])
    model = _empty(cls, config, "vae", **kw)
    state = convert_ldm_vae_checkpoint({prefix + k: v for k, v in tensors.items()}, dict(model.config))
    return _load_into(model, state, "vae")


def load_original_single_file(
    spec: FamilySpec, path: str | os.PathLike, *, config: str, dtype: torch.dtype, components: dict | None = None
):
    """The family's pipeline from an original-layout single file plus a config folder (module docstring).

    ``components`` are passed to ``from_pretrained`` as they are (a VAE override, ``text_encoder_3=None``) and
    win over the file's own parts.
    """
    import diffusers

    from .sources import pretrained_kwargs

    path = os.fspath(path)
    kw = {"local_files_only": True} if pretrained_kwargs().get("local_files_only") else {}
    cls = getattr(diffusers, spec.pipeline_class)
    index = cls.load_config(config, **kw)
    parts = file_parts(spec, safetensors_keys(path))
    if spec.denoiser not in parts:
        raise CharkitError(f"{path}: holds no {spec.name} transformer; pass the model's single file")
    claimed = tuple(p for c, p in parts.items() if c != spec.denoiser)
    components = dict(components or {})
    built: dict = {}
    for comp, prefix in parts.items():
        if comp in components:
            continue  # overridden (e.g. vae: sdxl-vae-fp16-fix) or left out (text_encoder_3=None)
        tensors = _read(path, prefix, claimed)
        if comp == spec.denoiser:
            built[comp] = _denoiser(spec, index, config, tensors, **kw)
        elif comp == "vae":
            built[comp] = _vae(index, config, tensors, prefix, **kw)
        else:
            built[comp] = _text_encoder(comp, index, config, tensors, **kw)
    built = {c: m.to(dtype).eval() for c, m in built.items()}
    pipe = cls.from_pretrained(config, dtype=dtype, **built, **components, **pretrained_kwargs())
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()  # diffusers leaves single-file T5 in train mode (dropout): never here
    return pipe

"""IP-Adapter pieces common to the UNet families: where the weights are, which kind of adapter a file holds,
which CLIP image encoder it needs, the loader itself, and FaceID embeddings in the form diffusers expects.

The h94 releases, read side by side with diffusers 0.42 (``charkit.testing.layouts`` writes them at toy size):

=====================  ==================================================  ========================================
variant                keys                                                 image encoder
=====================  ==================================================  ========================================
``plain``              ``image_proj.proj.weight`` + ``norm``                image embeds (``projection_dim``)
``plus``               ``image_proj.latents`` (Resampler; plus, plus-face)  penultimate hidden states (``hidden_size``)
``full-face``          ``image_proj.proj.{0,2,3}``                          hidden states
``faceid``             ``image_proj.proj.{0,2}`` + ``norm``                 none: 512-d ArcFace ids
``faceid-plus``        ``faceid`` + ``image_proj.perceiver_resampler.*``    ArcFace ids + ViT-H hidden states of the face
=====================  ==================================================  ========================================

SDXL's ``*_vit-h`` adapters live in ``sdxl_models/`` but need ``models/image_encoder`` (ViT-H): the encoder is
picked by what the weights read (their input width), not by folder name, and a given encoder that does not fit is a
one-line error. FaceID files carry a LoRA (``to_q_lora`` ...) that diffusers loads as adapter ``faceid_0``; it is
dropped whenever the adapter is unloaded or replaced (diffusers leaves it active, and keeps a stale one when a
second FaceID file loads). The families' ``pipeline.py`` expose :func:`load_unet_ip_adapter` as ``load_ip_adapter``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CharkitError
from .spec import FamilySpec

#: variant -> storyboard mode
MODES = {"plain": "image", "plus": "image", "full-face": "image", "faceid": "face", "faceid-plus": "face"}
FACEID_PREFIX = "faceid_"  # diffusers names a FaceID file's LoRA faceid_<n>


def ip_variant(keys) -> str:
    """The IP-Adapter variant of a weights file from its key names (the table above), or ``"other"``.

    >>> ip_variant(["image_proj.latents", "image_proj.proj_in.weight"])
    'plus'
    """
    keys = set(keys)
    if "image_proj.latents" in keys:
        return "plus"
    if "image_proj.proj.3.weight" in keys:
        return "full-face"
    if "image_proj.proj.weight" in keys:
        return "plain"
    if "image_proj.norm.weight" in keys and "image_proj.proj.0.weight" in keys:
        return "faceid-plus" if any(k.startswith("image_proj.perceiver_resampler.") for k in keys) else "faceid"
    return "other"


def ip_layout(keys) -> str:
    """'image' (an IP-Adapter on a reference image), 'face' (FaceID) or 'other', from the weights' key names."""
    return MODES.get(ip_variant(keys), "other")


def encoder_needs(shapes: Mapping[str, tuple[int, ...]], variant: str) -> tuple[str, int] | None:
    """``(CLIPVisionConfig field, value)`` the adapter's input width asks of its image encoder; None: no encoder.

    >>> encoder_needs({"image_proj.proj.weight": (128, 24)}, "plain")
    ('projection_dim', 24)
    """
    probe = {
        "plain": ("image_proj.proj.weight", "projection_dim"),
        "plus": ("image_proj.proj_in.weight", "hidden_size"),
        "full-face": ("image_proj.proj.0.weight", "hidden_size"),
        "faceid-plus": ("image_proj.perceiver_resampler.proj_in.weight", "hidden_size"),
    }.get(variant)
    if probe is None:
        return None
    key, field = probe
    return field, int(shapes[key][1])


def weight_shapes(path: Path, *, allow_pickle_weights: bool) -> dict[str, tuple[int, ...]]:
    """``key -> shape`` of an IP-Adapter file (safetensors: header only; h94's ``.bin``: only when allowed)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            return {k: tuple(f.get_slice(k).get_shape()) for k in names}
    from .sources import check_weights_file

    check_weights_file(path, what="IP-Adapter", allow_pickle_weights=allow_pickle_weights)
    nested = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, never arbitrary objects
    return {f"{head}.{k}": tuple(v.shape) for head, sd in nested.items() for k, v in sd.items()}


def ip_location(path, *, allow_pickle_weights: bool) -> tuple[str, str, str]:
    """(folder or repo id, subfolder, weight file name) for diffusers' load_ip_adapter."""
    from .sources import check_weights_file

    p = Path(path).expanduser()
    if p.is_file():
        check_weights_file(p, what="IP-Adapter", allow_pickle_weights=allow_pickle_weights)
        return str(p.parent.resolve()), "", p.name
    text = os.fspath(path)
    parts = text.split("/")
    if p.is_dir() or len(parts) < 3 or text.startswith((".", "/", "~")):
        raise CharkitError(
            f"IP-Adapter {text!r}: no such weights file; give a local .safetensors file or org/repo/path/file.safetensors"
        )
    check_weights_file(parts[-1], what="IP-Adapter", allow_pickle_weights=allow_pickle_weights)
    return "/".join(parts[:2]), "/".join(parts[2:-1]), parts[-1]


def _local_file(folder: str, subfolder: str, name: str) -> Path:
    """The weights file on disk (a hub file from the cache, or downloaded when online)."""
    local = Path(folder, subfolder, name)
    if local.is_file():
        return local
    from huggingface_hub import hf_hub_download

    from .sources import hub_offline, loading

    with loading("IP-Adapter", f"{folder}/{subfolder}/{name}"):
        return Path(hf_hub_download(folder, name, subfolder=subfolder or None, local_files_only=hub_offline()))


@dataclass(frozen=True)
class EncoderRef:
    """Where a CLIP image encoder is: a folder, or a hub repo and subfolder."""

    ref: str
    subfolder: str | None = None

    def __str__(self) -> str:
        return self.ref if not self.subfolder else f"{self.ref}/{self.subfolder}"

    def config(self) -> dict | None:
        p = Path(self.ref, self.subfolder or "", "config.json")
        if not p.is_file():
            try:
                from huggingface_hub import hf_hub_download

                from .sources import hub_offline

                p = Path(
                    hf_hub_download(self.ref, "config.json", subfolder=self.subfolder, local_files_only=hub_offline())
                )
            except Exception:  # not there: the next candidate, or the error below
                return None
        cfg = json.loads(p.read_text("utf-8"))
        return cfg.get("vision_config", cfg)


def _encoder_ref(text: str) -> EncoderRef:
    p = Path(text).expanduser()
    if p.is_dir():
        return EncoderRef(str(p.resolve()))
    parts = text.split("/")
    if len(parts) >= 3 and not text.startswith((".", "/", "~")):
        return EncoderRef("/".join(parts[:2]), "/".join(parts[2:]))  # h94/IP-Adapter/models/image_encoder
    if len(parts) == 2 and not text.startswith((".", "/", "~")):
        return EncoderRef(text)  # laion/CLIP-ViT-H-14-laion2B-s32B-b79K
    raise CharkitError(f"image_encoder {text!r}: no such folder; give a CLIP vision folder or a hub id")


def find_image_encoder(
    folder: str, subfolder: str, weights: Path, needs: tuple[str, int], explicit: str | os.PathLike | None
) -> EncoderRef:
    """The image encoder that fits ``needs``: ``explicit``, else ``image_encoder/`` beside the weights, else the
    h94 repo's ``models/image_encoder`` (ViT-H, what the SDXL ``*_vit-h`` adapters read)."""
    field, value = needs
    if explicit is not None:
        cands = [_encoder_ref(os.fspath(explicit))]
    elif Path(folder).is_dir():
        cands = [
            EncoderRef(str(weights.parent / "image_encoder")),
            EncoderRef(str(weights.parent.parent / "models" / "image_encoder")),
        ]
    else:
        cands = [
            EncoderRef(folder, f"{subfolder}/image_encoder" if subfolder else "image_encoder"),
            EncoderRef(folder, "models/image_encoder"),
        ]
    seen = []
    for c in cands:
        cfg = c.config()
        if cfg is None:
            continue
        if cfg.get(field) == value:
            return c
        seen.append(f"{c} has {field} {cfg.get(field)}")
    hint = "ViT-H adapters (*_vit-h, plus-face, FaceID plus) read models/image_encoder of h94/IP-Adapter"
    found = "; ".join(seen) if seen else f"none found at {', '.join(map(str, cands))}"
    raise CharkitError(
        f"IP-Adapter {weights.name} needs a CLIP image encoder with {field} {value} ({found}); "
        f"set image_encoder: <folder or hub id> ({hint})"
    )


def faceid_embeds(
    embedding, *, guidance: float, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> list[torch.Tensor]:
    """FaceID conditioning for :func:`generate`: one 512-d ArcFace embedding (or ``(n, 512)`` for n faces).

    Returns diffusers' ``ip_adapter_image_embeds`` form: a list with one 3-D tensor, the zero (negative) half
    first when classifier-free guidance is on (``guidance > 1``).
    """
    e = torch.as_tensor(embedding, dtype=torch.float32)
    if e.ndim == 1:
        e = e[None]
    if e.ndim != 2 or e.shape[-1] != 512:
        raise CharkitError(
            f"FaceID embedding has shape {tuple(e.shape)}: need 512 values (insightface buffalo_l ArcFace); "
            "dlib 128-d descriptors cannot condition FaceID"
        )
    e = e[None]  # (1, n, 512)
    if guidance > 1:
        e = torch.cat([torch.zeros_like(e), e])
    return [e.to(device=device, dtype=dtype)]


def has_unet_ip_adapter(pipe) -> bool:
    """True when an IP-Adapter (plain or FaceID) is loaded into the pipeline's UNet."""
    unet = pipe.unet
    return getattr(unet, "encoder_hid_proj", None) is not None and unet.config.encoder_hid_dim_type == "ip_image_proj"


def projection(pipe):
    """The loaded IP-Adapter's image projection layer (None when none is loaded)."""
    if not has_unet_ip_adapter(pipe):
        return None
    return pipe.unet.encoder_hid_proj.image_projection_layers[0]


def is_faceid_plus(pipe) -> bool:
    return type(projection(pipe)).__name__ == "IPAdapterFaceIDPlusImageProjection"


def faceid_adapters(pipe) -> list[str]:
    """Names of the FaceID LoRA adapters loaded with a FaceID file (``faceid_0``)."""
    unet = getattr(pipe, "unet", None)
    return sorted(n for n in (getattr(unet, "peft_config", None) or {}) if n.startswith(FACEID_PREFIX))


def drop_faceid_lora(pipe) -> None:
    """Delete the FaceID LoRA adapters (diffusers leaves them active after ``unload_ip_adapter``)."""
    for name in faceid_adapters(pipe):
        pipe.delete_adapters(name)


def _check_mode(spec: FamilySpec, weights: Path, variant: str, mode: str) -> None:
    if MODES.get(variant) == mode:
        return
    if variant == "other":
        raise CharkitError(
            f"{weights}: not an IP-Adapter of a known layout (plain, plus, plus-face, full-face, FaceID, FaceID "
            f"plus); use an h94 ip-adapter*_{spec.name} / ip-adapter-faceid*_{spec.name} file"
        )
    kind = "a FaceID" if MODES[variant] == "face" else "an image"
    raise CharkitError(
        f"{weights}: holds {kind} IP-Adapter, but mode {mode!r} was asked ({variant}); use mode {MODES[variant]!r}"
    )


def _register_encoder(pipe, enc: EncoderRef, *, allow_pickle_weights: bool) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from .sources import loading, pretrained_kwargs

    kw = {"subfolder": enc.subfolder} if enc.subfolder else {}
    with loading("image encoder", str(enc)):
        model = CLIPVisionModelWithProjection.from_pretrained(
            enc.ref, dtype=pipe.dtype, **kw, **pretrained_kwargs(allow_pickle_weights=allow_pickle_weights)
        )
    size = int(model.config.image_size)
    # the processor must match this encoder (diffusers keeps the first one it made, sized for another encoder)
    pipe.register_modules(
        image_encoder=model.to(pipe.device).eval(), feature_extractor=CLIPImageProcessor(size=size, crop_size=size)
    )


@dataclass(frozen=True)
class LoadedIPAdapter:
    """What :func:`load_unet_ip_adapter` loaded (recorded in the manifest)."""

    variant: str  # a key of MODES
    mode: str  # "image" | "face"
    image_encoder: str | None  # where the CLIP image encoder came from (None: FaceID needs none)


def load_unet_ip_adapter(
    spec: FamilySpec,
    pipe,
    path: str | os.PathLike,
    *,
    mode: str,
    image_encoder: str | os.PathLike | None = None,
    scale: float = 1.0,
    allow_pickle_weights: bool = False,
) -> LoadedIPAdapter:
    """Load an IP-Adapter (``mode="image"``: plain, plus, plus-face, full-face) or an IP-Adapter FaceID
    (``mode="face"``: FaceID, FaceID plus / plus-v2) into a UNet pipeline; any adapter already loaded is replaced.

    ``path`` is a local weights file, or ``org/repo/sub/folder/file.safetensors`` on the hub. The CLIP image
    encoder is ``image_encoder`` (a folder, a hub id, or ``org/repo/subfolder``), else the one beside the
    weights that fits them (module docstring). FaceID: pass 512-d ArcFace embeddings to ``generate``
    (:func:`faceid_embeds`); FaceID plus also the face image (its CLIP hidden states).
    """
    from .sources import hub_offline, loading

    if mode not in ("image", "face"):
        raise CharkitError(f"ip_adapter mode {mode!r}: choose 'image' or 'face'")
    spec.require("ip_adapter" if mode == "image" else "faceid")
    folder, subfolder, weight_name = ip_location(path, allow_pickle_weights=allow_pickle_weights)
    weights = _local_file(folder, subfolder, weight_name)
    shapes = weight_shapes(weights, allow_pickle_weights=allow_pickle_weights)
    variant = ip_variant(shapes)
    _check_mode(spec, weights, variant, mode)
    needs = encoder_needs(shapes, variant)
    enc = find_image_encoder(folder, subfolder, weights, needs, image_encoder) if needs else None
    unload_unet_ip_adapter(pipe)
    if enc is not None:
        _register_encoder(pipe, enc, allow_pickle_weights=allow_pickle_weights)
    with loading("IP-Adapter", str(path)):
        pipe.load_ip_adapter(
            folder,
            subfolder=subfolder,
            weight_name=weight_name,
            image_encoder_folder=None,  # charkit registered the right one above
            **({"local_files_only": True} if hub_offline() else {}),
        )
    if variant == "faceid-plus":
        # plus-v2 adds the id tokens back to the Resampler's output (IP-Adapter's shortcut=True); plus (v1) does not
        projection(pipe).shortcut = "plusv2" in weight_name.lower().replace("-", "")
    pipe.set_ip_adapter_scale(scale)
    return LoadedIPAdapter(variant, mode, None if enc is None else str(enc))


def unload_unet_ip_adapter(pipe) -> None:
    """Remove a loaded IP-Adapter and its FaceID LoRA (no-op when none is loaded)."""
    if has_unet_ip_adapter(pipe):
        pipe.unload_ip_adapter()
    drop_faceid_lora(pipe)


def set_faceid_plus_image(pipe, face_image, *, num_images: int, guidance: float) -> None:
    """FaceID plus: the CLIP hidden states of ``face_image`` for a call of ``num_images`` images (set on the
    projection layer as ``clip_embeds``, the form diffusers' FaceID-plus projection reads)."""
    if pipe.image_encoder is None:
        raise CharkitError("FaceID plus needs its ViT-H image encoder: load it with image_encoder=<folder or hub id>")
    cfg = guidance > 1 and pipe.unet.config.time_cond_proj_dim is None
    clip = pipe.prepare_ip_adapter_image_embeds([face_image], None, pipe._execution_device, num_images, cfg)[0]
    projection(pipe).clip_embeds = clip.to(dtype=pipe.unet.dtype)

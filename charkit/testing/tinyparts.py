"""Building blocks shared by the families' ``tiny.py``: tokenizers, tiny encoders, adapter weights.

Everything is real architecture at toy size with seeded random weights: the tiny pipelines load
and run through exactly the code paths of real models (tests, the demo and benchmarks use them).
Tokenizers are generated here (byte-level CLIP BPE, a small T5 unigram vocab), so nothing is
downloaded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CharkitError
from ..paths import atomic_write_bytes

# Words that get whole-word BPE merges, so prompts tokenise into a few realistic tokens.
_WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "person",
    "portrait",
    "woman",
    "man",
    "girl",
    "boy",
    "character",
    "face",
    "smiling",
    "standing",
    "sitting",
    "in",
    "on",
    "at",
    "with",
    "and",
    "city",
    "street",
    "park",
    "forest",
    "beach",
    "night",
    "day",
    "light",
    "red",
    "blue",
    "green",
    "black",
    "white",
    "hair",
    "eyes",
    "wearing",
    "dress",
    "shirt",
    "jacket",
    "closeup",
    "full",
    "body",
    "cinematic",
    "lifelike",
    "realistic",
    "detailed",
    "film",
    "grain",
    "ugly",
    "blurry",
    "bad",
]

FACEID_DIM = 512  # insightface buffalo_l ArcFace embedding size (what FaceID adapters consume)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for module initialisation without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP's reversible byte -> printable-unicode table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level CLIP BPE vocabulary: all 256 bytes (plain and word-final), merges for a few words, specials."""
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            merged = parts[0] + parts[1]
            if pair not in merges:
                merges.append(pair)
                tokens.append(merged)
            parts = [merged] + parts[2:]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab, merges


def clip_tokenizer(max_length: int = 77):
    """A real transformers CLIPTokenizer over :func:`clip_vocab` (model_max_length must be set, see OFFLINE.md)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def t5_tokenizer(max_length: int = 32):
    """A real transformers T5Tokenizer (unigram) over a small vocabulary built from (piece, score) pairs."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0 - 0.01 * i) for i, w in enumerate(_WORDS)]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"]
    pieces += [("▁" + c, -4.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def clip_text_config(hidden: int, *, projection_dim: int | None = None, layers: int = 2, positions: int = 77):
    """A tiny CLIPTextConfig whose special-token ids match :func:`clip_tokenizer`."""
    from transformers import CLIPTextConfig

    vocab, _ = clip_vocab()
    eos = vocab["<|endoftext|>"]
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=positions,
        projection_dim=projection_dim or hidden,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=eos,
        pad_token_id=eos,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )


def t5_encoder(seed: int, d_model: int = 32, vocab_size: int | None = None):
    from transformers import T5Config, T5EncoderModel

    vocab_size = vocab_size or len(t5_tokenizer())
    cfg = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
    )
    with seeded(seed):
        return T5EncoderModel(cfg).eval()


def image_encoder(seed: int, projection_dim: int = 32):
    """A tiny CLIPVisionModelWithProjection (the plain IP-Adapter's image encoder)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        projection_dim=projection_dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=4,
        num_channels=3,
    )
    with seeded(seed):
        return CLIPVisionModelWithProjection(cfg).eval()


def perturb_zero_params(module: torch.nn.Module, seed: int, std: float = 0.05) -> int:
    """Give every all-zero weight/bias random values (a fresh ControlNet's zero convs make it a no-op)."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.numel() and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * std)
                n += 1
    return n


def _unet_cross_attention_hidden_sizes(unet) -> list[int]:
    """hidden size of every cross-attention processor, in ``unet.attn_processors`` order (what diffusers numbers)."""
    cfg = unet.config
    sizes = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            sizes.append(cfg.block_out_channels[-1])
        elif name.startswith("up_blocks"):
            sizes.append(list(reversed(cfg.block_out_channels))[int(name[len("up_blocks.")])])
        else:
            sizes.append(cfg.block_out_channels[int(name[len("down_blocks.")])])
    return sizes


def _ip_cross_attention_weights(unet, seed: int) -> dict[str, torch.Tensor]:
    # The original IP-Adapter files number processors 1, 3, 5, ... (the self-attention slots are skipped).
    from diffusers.models.attention_processor import IPAdapterAttnProcessor

    out: dict[str, torch.Tensor] = {}
    cross = unet.config.cross_attention_dim
    with seeded(seed):
        for i, hidden in enumerate(_unet_cross_attention_hidden_sizes(unet)):
            sd = IPAdapterAttnProcessor(hidden_size=hidden, cross_attention_dim=cross, scale=1.0).state_dict()
            out[f"ip_adapter.{2 * i + 1}.to_k_ip.weight"] = sd["to_k_ip.0.weight"].contiguous()
            out[f"ip_adapter.{2 * i + 1}.to_v_ip.weight"] = sd["to_v_ip.0.weight"].contiguous()
    return out


def ip_adapter_state_dict(unet, *, image_embed_dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Plain IP-Adapter weights for ``unet`` in the original file layout (``image_proj.*``, ``ip_adapter.N.*``)."""
    from diffusers.models.embeddings import ImageProjection

    cross = unet.config.cross_attention_dim
    with seeded(seed):
        proj = ImageProjection(cross_attention_dim=cross, image_embed_dim=image_embed_dim, num_image_text_embeds=4)
    sd = proj.state_dict()
    out = {
        "image_proj.proj.weight": sd["image_embeds.weight"],
        "image_proj.proj.bias": sd["image_embeds.bias"],
        "image_proj.norm.weight": sd["norm.weight"],
        "image_proj.norm.bias": sd["norm.bias"],
    }
    out.update(_ip_cross_attention_weights(unet, seed + 1))
    return {k: v.contiguous() for k, v in out.items()}


def faceid_state_dict(unet, *, seed: int, id_dim: int = FACEID_DIM) -> dict[str, torch.Tensor]:
    """IP-Adapter FaceID weights (512-d ArcFace id embedding -> 4 tokens), original file layout, no LoRA part."""
    from diffusers.models.embeddings import IPAdapterFaceIDImageProjection

    cross = unet.config.cross_attention_dim
    with seeded(seed):
        proj = IPAdapterFaceIDImageProjection(image_embed_dim=id_dim, cross_attention_dim=cross, mult=2, num_tokens=4)
    sd = proj.state_dict()
    out = {
        "image_proj.proj.0.weight": sd["ff.net.0.proj.weight"],
        "image_proj.proj.0.bias": sd["ff.net.0.proj.bias"],
        "image_proj.proj.2.weight": sd["ff.net.2.weight"],
        "image_proj.proj.2.bias": sd["ff.net.2.bias"],
        "image_proj.norm.weight": sd["norm.weight"],
        "image_proj.norm.bias": sd["norm.bias"],
    }
    out.update(_ip_cross_attention_weights(unet, seed + 1))
    return {k: v.contiguous() for k, v in out.items()}


def flux_ip_adapter_state_dict(transformer, *, image_embed_dim: int, seed: int) -> dict[str, torch.Tensor]:
    """A Flux IP-Adapter in the XLabs file layout (``ip_adapter_proj_model.*``, ``double_blocks.N.processor.*``)."""
    from diffusers.models.embeddings import ImageProjection

    cfg = transformer.config
    joint, inner = cfg.joint_attention_dim, cfg.num_attention_heads * cfg.attention_head_dim
    with seeded(seed):
        proj = ImageProjection(cross_attention_dim=joint, image_embed_dim=image_embed_dim, num_image_text_embeds=4)
        out = {
            "ip_adapter_proj_model.proj.weight": proj.image_embeds.weight,
            "ip_adapter_proj_model.proj.bias": proj.image_embeds.bias,
            "ip_adapter_proj_model.norm.weight": proj.norm.weight,
            "ip_adapter_proj_model.norm.bias": proj.norm.bias,
        }
        for i in range(cfg.num_layers):  # one k/v pair per double-stream block
            for kv in ("k", "v"):
                lin = torch.nn.Linear(joint, inner)
                out[f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj.weight"] = lin.weight
                out[f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj.bias"] = lin.bias
    return {k: v.detach().contiguous() for k, v in out.items()}


def save_safetensors(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().contiguous() for k, v in state_dict.items()}, metadata=metadata))


@dataclass
class TinyModel:
    """Paths of a tiny model written by a family's ``build_tiny``."""

    family: str
    root: Path  # diffusers pipeline folder (load_pipeline(root))
    controlnet: Path | None = None  # diffusers ControlNet folder
    ip_adapter: Path | None = None  # plain IP-Adapter .safetensors (image encoder beside it in image_encoder/)
    image_encoder: Path | None = None  # CLIPVisionModelWithProjection folder
    faceid: Path | None = None  # IP-Adapter FaceID .safetensors
    single_file: Path | None = None  # original-layout single-file checkpoint (load with config=root)

    def files(self) -> list[Path]:
        return [
            p
            for p in (self.root, self.controlnet, self.ip_adapter, self.image_encoder, self.faceid, self.single_file)
            if p
        ]

    def to_json(self) -> dict:
        """Paths relative to ``root`` (what ``charkit-tiny.json`` in the folder records)."""

        def rel(p: Path | None) -> str | None:
            return None if p is None else p.relative_to(self.root).as_posix()

        return {
            "family": self.family,
            "controlnet": rel(self.controlnet),
            "ip_adapter": rel(self.ip_adapter),
            "image_encoder": rel(self.image_encoder),
            "faceid": rel(self.faceid),
            "single_file": rel(self.single_file),
        }


MANIFEST = "charkit-tiny.json"


def write_manifest(tiny: TinyModel) -> None:
    from ..paths import atomic_write_json

    atomic_write_json(tiny.root / MANIFEST, tiny.to_json())


def load_tiny(folder: str | os.PathLike) -> TinyModel:
    """The :class:`TinyModel` that ``charkit tiny-model`` wrote to ``folder`` (read from its charkit-tiny.json)."""
    import json

    root = Path(folder)
    try:
        data = json.loads((root / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise CharkitError(
            f"{root}: no readable {MANIFEST} ({type(e).__name__}); build it with `charkit tiny-model`"
        ) from None

    def path(key: str) -> Path | None:
        return None if data.get(key) is None else root / data[key]

    return TinyModel(
        family=data["family"],
        root=root,
        controlnet=path("controlnet"),
        ip_adapter=path("ip_adapter"),
        image_encoder=path("image_encoder"),
        faceid=path("faceid"),
        single_file=path("single_file"),
    )


@contextlib.contextmanager
def staging_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Build into a temporary folder beside ``out_dir`` and move it into place only when complete."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CharkitError(f"{out}: output folder exists and is not empty; choose a new folder or delete it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        yield tmp
        if out.exists():  # an empty folder we may replace
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def relocate(tiny: TinyModel, staged: Path, final: Path) -> TinyModel:
    """The same TinyModel with paths under ``final`` instead of the staging folder."""

    def move(p: Path | None) -> Path | None:
        return None if p is None else final / p.relative_to(staged)

    return TinyModel(
        family=tiny.family,
        root=move(tiny.root),
        controlnet=move(tiny.controlnet),
        ip_adapter=move(tiny.ip_adapter),
        image_encoder=move(tiny.image_encoder),
        faceid=move(tiny.faceid),
        single_file=move(tiny.single_file),
    )

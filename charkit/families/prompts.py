"""AUTOMATIC1111 prompt syntax on diffusers pipelines: weights, ``BREAK``, prompts past 77 tokens, clip skip.

The pipeline keyword arguments come out of one call per family; they replace ``prompt=`` /
``negative_prompt=`` / ``num_images_per_prompt=`` in the diffusers pipeline call:

>>> embeds = encode_sd15(pipe, "a (red:1.3) dress, " * 30, "blurry", clip_skip=2)  # doctest: +SKIP
>>> images = pipe(**embeds.pipeline_kwargs(num_images_per_prompt=2), num_inference_steps=25).images  # doctest: +SKIP

Steps, A1111's own (``modules/prompt_parser.py`` and ``sd_hijack_clip.py``):

1. :func:`parse_a1111` turns the text into weighted :class:`Chunk` s: ``(x)`` x1.1, ``((x))`` x1.21, ``[x]``
   /1.1, ``(x:1.3)`` explicit, nesting multiplies, ``\\(`` escapes, unbalanced brackets close at the end of the
   prompt, ``BREAK`` ends a 75-token window; runs of equal weight merge, so ``(word:1.0)`` is plain ``word``.
2. :func:`tokenize_chunks` fills 75-token windows per CLIP tokenizer (each chunk tokenized on its own; a window
   that fills up moves the words after its last comma, if within 20 tokens, to the next window) and wraps each
   in BOS/EOS/padding = 77 ids. Nothing is ever truncated.
3. Window by window (the prompts of a batch together, as diffusers encodes them), the text encoder runs; each
   prompt's per-token weights scale its output embeddings and the window's mean is restored (A1111's
   "Original" emphasis); windows concatenate along the sequence. Positive and negative prompts (and every
   prompt of a batch) are padded with empty windows to the same count.

A prompt without syntax that fits one window gives bit-identical embeddings to diffusers' own ``prompt=`` path.
T5 (SD3, Flux) is not windowed: it reads the whole prompt (syntax stripped, ``BREAK`` as a space) in one
sequence of ``max_sequence_length`` tokens, with the same weights; a longer prompt is an error, not a cut.
See docs/prompts.md for the per-family table and the ``clip_skip`` mapping.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import CharkitError
from .registry import get_spec

#: A1111's ``re_attention`` (modules/prompt_parser.py), unchanged.
_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
ROUND = 1.1  # (x)
SQUARE = 1 / 1.1  # [x]  (A1111 multiplies by 1/1.1; it does not divide by 1.1)
COMMA_BACKTRACK = 20  # A1111's default opts.comma_padding_backtrack


# --- parse ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A run of prompt text with one weight, or a ``BREAK`` (``is_break``; its text is empty).

    >>> parse_a1111("a (red:1.3) dress")
    [Chunk(text='a ', weight=1.0, is_break=False), Chunk(text='red', weight=1.3, is_break=False), Chunk(text=' dress', weight=1.0, is_break=False)]
    """

    text: str
    weight: float = 1.0
    is_break: bool = False


BREAK = Chunk("", 1.0, is_break=True)


def parse_a1111(text: str) -> list[Chunk]:
    """A1111's ``parse_prompt_attention``: weighted chunks, ``BREAK`` markers, equal-weight runs merged.

    Same results as A1111, float for float, with one deliberate difference: a ``BREAK`` inside brackets still
    breaks (A1111 multiplies its internal -1 marker and then feeds the word "BREAK" to CLIP with a negative
    weight). A weight that is not a number, such as ``(x:1.2.3)``, is a CharkitError (A1111 crashes).

    >>> [(c.text, round(c.weight, 4)) for c in parse_a1111("a ((house)) [on] (hill:0.5)")]
    [('a ', 1.0), ('house', 1.21), (' ', 1.0), ('on', 0.9091), (' ', 1.0), ('hill', 0.5)]
    >>> [c.is_break for c in parse_a1111("cat BREAK dog")]
    [False, True, False]
    """
    parts: list[list] = []  # [text, weight] or None for a BREAK
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, by: float) -> None:
        for part in parts[start:]:
            if part is not None:
                part[1] *= by

    for m in _ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            parts.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(parts))
        elif token == "[":
            square_open.append(len(parts))
        elif weight is not None and round_open:
            multiply(round_open.pop(), _number(weight, text))
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:  # plain text, or a stray ")" / "]" / ":" / ":1.2)" that A1111 keeps as text
            for i, piece in enumerate(_BREAK.split(token)):
                if i:
                    parts.append(None)
                parts.append([piece, 1.0])
    for pos in round_open:  # unbalanced "(": A1111 closes it at the end of the prompt
        multiply(pos, ROUND)
    for pos in square_open:
        multiply(pos, SQUARE)

    merged: list[list] = []
    for part in parts:
        if part is not None and merged and merged[-1] is not None and merged[-1][1] == part[1]:
            merged[-1][0] += part[0]
        else:
            merged.append(None if part is None else list(part))
    chunks = [BREAK if p is None else Chunk(p[0], p[1]) for p in merged if p is None or p[0]]
    return chunks or [Chunk("", 1.0)]


def _number(weight: str, text: str) -> float:
    try:
        return float(weight)
    except ValueError:
        raise CharkitError(
            f"prompt {_short(text)!r}: weight {weight!r} is not a number; write it like (word:1.2)"
        ) from None


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


# --- tokenize --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenChunk:
    """One CLIP window: BOS + up to 75 prompt tokens + EOS + padding = ``model_max_length`` (77) ids.

    ``weights`` has one weight per id (1.0 on BOS, EOS and padding); ``length`` counts the prompt tokens.
    """

    ids: tuple[int, ...]
    weights: tuple[float, ...]
    length: int


def tokenize_chunks(chunks: Sequence[Chunk], tokenizer, *, convert=None) -> list[TokenChunk]:
    """A1111's ``tokenize_line``: the chunks' tokens in windows of ``model_max_length - 2`` (75).

    Each chunk is tokenized on its own (as A1111 does). A full window whose last comma is at most 20 tokens
    back moves the tokens after that comma to the next window; ``BREAK`` closes the window; a trailing empty
    window is dropped, but an empty prompt is one window. ``convert`` rewrites each chunk's text first (textual
    inversion: the pipeline's ``maybe_convert_prompt``).

    >>> [c.length for c in tokenize_chunks(parse_a1111("a cat BREAK a dog"), tokenizer)]  # doctest: +SKIP
    [2, 2]
    """
    window = int(tokenizer.model_max_length)
    if not 3 <= window <= 4096:
        raise CharkitError(f"CLIP tokenizer has model_max_length={window}; set it to the text encoder's length (77)")
    size = window - 2
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = tokenizer.get_vocab().get(",</w>")
    out: list[TokenChunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        fill = size - len(ids)
        out.append(
            TokenChunk(
                ids=(bos, *ids, eos, *([pad] * fill)),
                weights=(1.0, *weights, 1.0, *([1.0] * fill)),
                length=len(ids),
            )
        )
        ids, weights, last_comma = [], [], -1

    for chunk in chunks:
        if chunk.is_break:
            close()
            continue
        text = convert(chunk.text) if convert is not None else chunk.text
        for token in tokenizer(text, add_special_tokens=False, verbose=False).input_ids:
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == size and last_comma != -1 and len(ids) - last_comma <= COMMA_BACKTRACK:
                keep = last_comma + 1
                moved_ids, moved_weights = ids[keep:], weights[keep:]
                ids, weights = ids[:keep], weights[:keep]
                close()
                ids, weights = moved_ids, moved_weights
            if len(ids) == size:
                close()
            ids.append(token)
            weights.append(chunk.weight)
    if ids or not out:
        close()
    return out


def _empty_chunk(tokenizer) -> TokenChunk:
    return tokenize_chunks([Chunk("")], tokenizer)[0]


# --- encode ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptEmbeds:
    """Text embeddings of one or more prompts, ready for a diffusers pipeline call.

    ``chunks`` is the number of 77-token CLIP windows every prompt (and negative prompt) was padded to;
    ``tokens`` the CLIP token count of each prompt (A1111 shows it as "n/75").
    """

    family: str
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    chunks: int = 1
    tokens: tuple[int, ...] = ()

    @property
    def batch_size(self) -> int:
        return int(self.prompt_embeds.shape[0])

    def pipeline_kwargs(self, num_images_per_prompt: int = 1) -> dict:
        """The keyword arguments that replace ``prompt=``, ``negative_prompt=`` and ``num_images_per_prompt=``.

        diffusers' SD3 and Flux pipelines do not repeat given embeddings per image (a batch mismatch, or for Flux
        with several prompts), so for sd3 and flux the embeddings come repeated here (each prompt's images
        together, as diffusers orders them) and ``num_images_per_prompt`` is 1. SD1.5 and SDXL repeat them
        in the pipeline, in step with the IP-Adapter image embeddings they also repeat.

        >>> pipe(**embeds.pipeline_kwargs(2), num_inference_steps=20)  # doctest: +SKIP
        """
        if num_images_per_prompt < 1:
            raise CharkitError(f"num_images_per_prompt={num_images_per_prompt}: must be at least 1")
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        kwargs = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        if get_spec(self.family).denoiser == "transformer" and num_images_per_prompt > 1:
            kwargs = {n: t.repeat_interleave(num_images_per_prompt, dim=0) for n, t in kwargs.items()}
            num_images_per_prompt = 1
        kwargs["num_images_per_prompt"] = num_images_per_prompt
        return kwargs


@dataclass(frozen=True)
class _Clip:
    """One CLIP text encoder and how charkit reads it."""

    tokenizer: object
    encoder: torch.nn.Module
    layer: str  # "sd15": clip_skip n = n-th hidden state from the end + final LayerNorm; "hidden": n+1-th, no norm
    clip_skip: int


def _as_list(prompt, what: str) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise CharkitError(f"{what} must be a string or a non-empty list of strings")
    return prompts


def _negatives(negative_prompt, n: int) -> list[str] | None:
    if negative_prompt is None:
        return None
    negatives = _as_list(negative_prompt, "negative_prompt")
    if len(negatives) == 1:
        return negatives * n
    if len(negatives) != n:
        raise CharkitError(f"{len(negatives)} negative prompts for {n} prompts: pass one, or one per prompt")
    return negatives


def _check_clip_skip(clip_skip: int, encoders) -> None:
    layers = min(int(e.config.num_hidden_layers) for e in encoders)
    if not isinstance(clip_skip, int) or isinstance(clip_skip, bool) or not 1 <= clip_skip <= layers:
        raise CharkitError(
            f"clip_skip={clip_skip!r}: must be a whole number from 1 (the default) to {layers} "
            "(A1111's 'Clip skip'; 2 = the penultimate CLIP layer)"
        )


def _device(module: torch.nn.Module) -> torch.device:
    from diffusers.utils.torch_utils import get_module_execution_device

    return get_module_execution_device(module)


def _converter(pipe, tokenizer):
    """Textual inversion's text rewrite (``<tok>`` -> ``<tok> <tok>_1 ...``), or None when nothing can need it."""
    from diffusers.loaders import TextualInversionLoaderMixin

    if not isinstance(pipe, TextualInversionLoaderMixin):
        return None
    specials = set(tokenizer.all_special_tokens)
    added = [t for t in tokenizer.get_added_vocab() if t not in specials]
    if not added:
        return None  # (maybe_convert_prompt tokenizes, which warns on long chunks for nothing)
    return lambda text: pipe.maybe_convert_prompt(text, tokenizer) if any(t in text for t in added) else text


def _emphasis(z: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """A1111's "Original" emphasis: scale each token's embedding by its weight, then restore the mean."""
    if all(w == 1.0 for w in weights):
        return z  # bit-exact: no weights, no arithmetic
    w = torch.tensor(weights, dtype=torch.float32, device=z.device).reshape(1, -1, 1)
    z32 = z.float()
    mean = z32.mean()
    z32 = z32 * w
    z32 = z32 * (mean / z32.mean())
    return z32.to(z.dtype)


def _encode_windows(clip: _Clip, chunks: Sequence[TokenChunk]) -> tuple[torch.Tensor, torch.Tensor]:
    """One window per prompt, as one batch (diffusers encodes a batch of prompts in one call, and so must we to
    give the same floats): hidden states ``(B, 77, D)`` after emphasis, pooled ``(B, P)``."""
    enc = clip.encoder
    ids = torch.tensor([c.ids for c in chunks], dtype=torch.long, device=_device(enc))
    mask = None
    if getattr(enc.config, "use_attention_mask", False):  # diffusers' SD1.5 rule: mask only where configured
        rows = [[1] * (c.length + 2) + [0] * (len(c.ids) - c.length - 2) for c in chunks]  # BOS..first EOS
        mask = torch.tensor(rows, device=ids.device)
    if clip.layer == "sd15" and clip.clip_skip == 1:
        out = enc(ids, attention_mask=mask)  # exactly diffusers' default call
        hidden = out[0]
    else:
        out = enc(ids, attention_mask=mask, output_hidden_states=True)
        if clip.layer == "sd15":
            # A1111 "Clip skip n" on SD1.5: n-th hidden state from the end, then CLIP's final LayerNorm.
            # (transformers >= 5 dropped the ``text_model`` wrapper that diffusers 0.42 still looks for.)
            norm = getattr(enc, "text_model", enc).final_layer_norm
            hidden = norm(out.hidden_states[-clip.clip_skip])
        else:
            # SDXL / SD3 read the penultimate layer by default, without the final LayerNorm (clip_skip 1).
            hidden = out.hidden_states[-(clip.clip_skip + 1)]
    pooled = out[0] if out[0].ndim == 2 else out.pooler_output  # text_embeds (with projection) or pooler output
    hidden = torch.cat([_emphasis(hidden[i : i + 1], c.weights) for i, c in enumerate(chunks)])
    return hidden, pooled


def _clip_windows(clips: Sequence[_Clip], parsed: Sequence[Sequence[Chunk]], pipe) -> list[list[list[TokenChunk]]]:
    """``[clip][prompt] -> windows``, every list padded with empty windows to the longest."""
    windows = [
        [tokenize_chunks(chunks, c.tokenizer, convert=_converter(pipe, c.tokenizer)) for chunks in parsed]
        for c in clips
    ]
    n = max(len(w) for per_clip in windows for w in per_clip)
    return [[w + [_empty_chunk(c.tokenizer)] * (n - len(w)) for w in per_clip] for c, per_clip in zip(clips, windows)]


def _clip_batch(clip: _Clip, windows: Sequence[Sequence[TokenChunk]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of prompts' windows -> (hidden states, windows concatenated along the sequence; pooled output of
    the first window)."""
    encoded = [_encode_windows(clip, [w[i] for w in windows]) for i in range(len(windows[0]))]
    return torch.cat([h for h, _ in encoded], dim=1), encoded[0][1]


def _t5_batch(tokenizer, encoder, parsed: Sequence[Sequence[Chunk]], max_sequence_length: int, pipe) -> torch.Tensor:
    """T5 embeddings ``(B, max_sequence_length, D)``, one call for the batch as in diffusers."""
    rows = [_t5_tokens(tokenizer, chunks, max_sequence_length, pipe) for chunks in parsed]
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long, device=_device(encoder))
    z = encoder(ids, output_hidden_states=False)[0]
    return torch.cat([_emphasis(z[i : i + 1], weights) for i, (_, weights) in enumerate(rows)])


def _t5_tokens(tokenizer, chunks: Sequence[Chunk], max_sequence_length: int, pipe) -> tuple[list[int], list[float]]:
    """T5 ids and weights (padded to ``max_sequence_length``) of the whole prompt, weighted by character spans.

    The text is the chunks joined (syntax removed, ``BREAK`` as a space) and tokenized once, so the tokens are
    those of the plain prompt; a token takes the weight of the chunk its first character comes from.
    """
    convert = _converter(pipe, tokenizer)
    pieces, spans, pos = [], [], 0
    for c in chunks:
        text = " " if c.is_break else convert(c.text) if convert is not None else c.text
        pieces.append(text)
        spans.append((pos, pos + len(text), 1.0 if c.is_break else c.weight))
        pos += len(text)
    text = "".join(pieces)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True, verbose=False)
    ids, offsets = list(enc.input_ids), list(enc.offset_mapping)
    if len(ids) > max_sequence_length:
        raise CharkitError(
            f"prompt {_short(text)!r} is {len(ids)} T5 tokens, more than max_sequence_length={max_sequence_length}; "
            "shorten it or raise max_sequence_length (at most 512)"
        )

    def weight(start: int, end: int) -> float:
        if start == end:  # EOS and other specials
            return 1.0
        return next((w for a, b, w in spans if a <= start < b), 1.0)

    fill = max_sequence_length - len(ids)
    return ids + [tokenizer.pad_token_id] * fill, [weight(a, b) for a, b in offsets] + [1.0] * fill


def _parse_all(prompts: Sequence[str]) -> list[list[Chunk]]:
    return [parse_a1111(p) for p in prompts]


def _token_counts(windows: Sequence[Sequence[TokenChunk]]) -> tuple[int, ...]:
    return tuple(sum(c.length for c in w) for w in windows)


def encode_sd15(pipe, prompt: str | Sequence[str], negative_prompt=None, *, clip_skip: int = 1) -> PromptEmbeds:
    """SD1.5 embeddings: A1111 windows and weights, ``clip_skip`` as A1111 counts it (1 = last layer).

    ``negative_prompt`` None encodes "" (as diffusers does). Several prompts make a batch; one negative
    prompt serves them all.

    >>> pipe(**encode_sd15(pipe, "a (red:1.2) dress").pipeline_kwargs(), num_inference_steps=20)  # doctest: +SKIP
    """
    prompts = _as_list(prompt, "prompt")
    negatives = _negatives(negative_prompt, len(prompts)) or [""] * len(prompts)
    _check_clip_skip(clip_skip, [pipe.text_encoder])
    clip = _Clip(pipe.tokenizer, pipe.text_encoder, "sd15", clip_skip)
    n = len(prompts)
    with torch.no_grad():
        (windows,) = _clip_windows([clip], _parse_all(prompts + negatives), pipe)
        embeds, _ = _clip_batch(clip, windows[:n])
        negative_embeds, _ = _clip_batch(clip, windows[n:])
    return PromptEmbeds(
        family="sd15",
        prompt_embeds=embeds,
        negative_prompt_embeds=negative_embeds,
        chunks=len(windows[0]),
        tokens=_token_counts(windows[:n]),
    )


def encode_sdxl(pipe, prompt: str | Sequence[str], negative_prompt=None, *, clip_skip: int = 1) -> PromptEmbeds:
    """SDXL embeddings: both CLIP encoders' penultimate hidden states side by side, pooled from the second
    encoder's first window; A1111 windows and weights per encoder.

    ``negative_prompt`` None gives zeros where the model asks for them (``force_zeros_for_empty_prompt``,
    as diffusers does), else "". ``clip_skip`` 2 reads one layer further back on both encoders.

    >>> pipe(**encode_sdxl(pipe, "a cat BREAK a hat").pipeline_kwargs(), num_inference_steps=20)  # doctest: +SKIP
    """
    prompts = _as_list(prompt, "prompt")
    negatives = _negatives(negative_prompt, len(prompts))
    zeros = negatives is None and bool(pipe.config.get("force_zeros_for_empty_prompt", False))
    if negatives is None:
        negatives = [""] * len(prompts)
    _check_clip_skip(clip_skip, [pipe.text_encoder, pipe.text_encoder_2])
    clips = [
        _Clip(pipe.tokenizer, pipe.text_encoder, "hidden", clip_skip),
        _Clip(pipe.tokenizer_2, pipe.text_encoder_2, "hidden", clip_skip),
    ]
    n = len(prompts)
    with torch.no_grad():
        windows = _clip_windows(clips, _parse_all(prompts if zeros else prompts + negatives), pipe)

        def encode(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
            (h1, _), (h2, pooled) = (_clip_batch(c, windows[k][rows]) for k, c in enumerate(clips))
            return torch.cat([h1, h2], dim=-1), pooled

        embeds, pooled = encode(slice(0, n))
        negative_embeds, negative_pooled = (
            (torch.zeros_like(embeds), torch.zeros_like(pooled)) if zeros else encode(slice(n, None))
        )
    return PromptEmbeds(
        family="sdxl",
        prompt_embeds=embeds,
        negative_prompt_embeds=negative_embeds,
        pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=negative_pooled,
        chunks=len(windows[0][0]),
        tokens=_token_counts(windows[0][:n]),
    )


def encode_sd3(
    pipe,
    prompt: str | Sequence[str],
    negative_prompt=None,
    *,
    clip_skip: int = 1,
    max_sequence_length: int = 256,
) -> PromptEmbeds:
    """SD3 embeddings: [CLIP-L | CLIP-G] windows (A1111 windows and weights, zero-padded to T5's width), then
    the T5 sequence (same weights); pooled = CLIP-L and CLIP-G of the first window.

    Without T5 (``text_encoder_3=None``) the T5 part is zeros of ``max_sequence_length`` tokens, as in
    diffusers. ``negative_prompt`` None encodes "".

    >>> pipe(**encode_sd3(pipe, "a (red:1.2) dress").pipeline_kwargs(), num_inference_steps=28)  # doctest: +SKIP
    """
    prompts = _as_list(prompt, "prompt")
    negatives = _negatives(negative_prompt, len(prompts)) or [""] * len(prompts)
    _check_max_sequence_length(max_sequence_length)
    _check_clip_skip(clip_skip, [pipe.text_encoder, pipe.text_encoder_2])
    clips = [
        _Clip(pipe.tokenizer, pipe.text_encoder, "hidden", clip_skip),
        _Clip(pipe.tokenizer_2, pipe.text_encoder_2, "hidden", clip_skip),
    ]
    n = len(prompts)
    parsed = _parse_all(prompts + negatives)
    dtype = pipe.text_encoder.dtype
    with torch.no_grad():
        windows = _clip_windows(clips, parsed, pipe)

        def encode(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
            (h1, p1), (h2, p2) = (_clip_batch(c, windows[k][rows]) for k, c in enumerate(clips))
            clip_embeds = torch.cat([h1.to(dtype), h2.to(dtype)], dim=-1)
            if pipe.text_encoder_3 is None:
                shape = (clip_embeds.shape[0], max_sequence_length, pipe.transformer.config.joint_attention_dim)
                t5 = torch.zeros(shape, device=clip_embeds.device, dtype=dtype)
            else:
                t5 = _t5_batch(pipe.tokenizer_3, pipe.text_encoder_3, parsed[rows], max_sequence_length, pipe)
                t5 = t5.to(dtype=pipe.text_encoder_3.dtype, device=clip_embeds.device)
            clip_embeds = torch.nn.functional.pad(clip_embeds, (0, t5.shape[-1] - clip_embeds.shape[-1]))
            return torch.cat([clip_embeds, t5], dim=-2), torch.cat([p1, p2], dim=-1)

        embeds, pooled = encode(slice(0, n))
        negative_embeds, negative_pooled = encode(slice(n, None))
    return PromptEmbeds(
        family="sd3",
        prompt_embeds=embeds,
        negative_prompt_embeds=negative_embeds,
        pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=negative_pooled,
        chunks=len(windows[0][0]),
        tokens=_token_counts(windows[0][:n]),
    )


def encode_flux(
    pipe,
    prompt: str | Sequence[str],
    negative_prompt=None,
    *,
    clip_skip: int = 1,
    max_sequence_length: int = 512,
) -> PromptEmbeds:
    """Flux embeddings: the T5 sequence (A1111 weights on T5 tokens) and CLIP's pooled output of the prompt's
    first 75-token window (text after it, or after the first ``BREAK``, reaches Flux through T5 only).

    Flux reads no CLIP hidden states, so ``clip_skip`` other than 1 is an error. ``negative_prompt`` None
    gives no negative embeddings (Flux uses one only with ``true_cfg_scale > 1``).

    >>> pipe(**encode_flux(pipe, "a (red:1.2) dress").pipeline_kwargs(), num_inference_steps=28)  # doctest: +SKIP
    """
    prompts = _as_list(prompt, "prompt")
    negatives = _negatives(negative_prompt, len(prompts))
    _check_max_sequence_length(max_sequence_length)
    if clip_skip != 1:
        raise CharkitError(
            f"clip_skip={clip_skip!r}: Flux reads only CLIP's pooled output, so clip skip does not apply; drop it"
        )
    clip = _Clip(pipe.tokenizer, pipe.text_encoder, "pooled", 1)
    convert = _converter(pipe, clip.tokenizer)

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[list[TokenChunk]]]:
        parsed = _parse_all(texts)
        windows = [tokenize_chunks(c, clip.tokenizer, convert=convert) for c in parsed]
        ids = torch.tensor([w[0].ids for w in windows], dtype=torch.long, device=_device(clip.encoder))
        pooled = clip.encoder(ids, output_hidden_states=False).pooler_output  # exactly diffusers' Flux call
        t5 = _t5_batch(pipe.tokenizer_2, pipe.text_encoder_2, parsed, max_sequence_length, pipe)
        return t5.to(pipe.text_encoder_2.dtype), pooled.to(clip.encoder.dtype), windows

    with torch.no_grad():
        embeds, pooled, windows = encode(prompts)
        negative_embeds, negative_pooled, _ = encode(negatives) if negatives else (None, None, None)
    return PromptEmbeds(
        family="flux",
        prompt_embeds=embeds,
        negative_prompt_embeds=negative_embeds,
        pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=negative_pooled,
        chunks=1,
        tokens=_token_counts(windows),
    )


def _check_max_sequence_length(n: int) -> None:
    if not isinstance(n, int) or not 1 <= n <= 512:
        raise CharkitError(f"max_sequence_length={n!r}: must be a whole number from 1 to 512")


#: ``FamilySpec.text_conditioning`` -> its encoder
ENCODERS = {"clip": encode_sd15, "clip2": encode_sdxl, "clip2_t5": encode_sd3, "clip_t5": encode_flux}


def encode_prompt(family: str, pipe, prompt, negative_prompt=None, **options) -> PromptEmbeds:
    """The family's encoder, by its ``SPEC.text_conditioning`` (:func:`encode_sd15`, :func:`encode_sdxl`,
    :func:`encode_sd3`, :func:`encode_flux`).

    >>> encode_prompt("sdxl", pipe, "a (cat:1.2)", "blurry", clip_skip=2)  # doctest: +SKIP
    """
    return ENCODERS[get_spec(family).text_conditioning](pipe, prompt, negative_prompt, **options)

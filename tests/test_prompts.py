"""A1111 prompt syntax: the parser against A1111's own cases and properties, chunking properties, and the
embeddings on tiny real pipelines of every family (pixels compared with diffusers' own ``prompt=`` path)."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from charkit.errors import CharkitError
from charkit.families import get_family
from charkit.families.prompts import (
    BREAK,
    Chunk,
    encode_flux,
    encode_prompt,
    encode_sd3,
    encode_sd15,
    encode_sdxl,
    parse_a1111,
    tokenize_chunks,
)
from charkit.testing.tinyparts import _WORDS, clip_tokenizer

SIZE, STEPS = 32, 2
GUIDANCE = {"sd15": 7.0, "sdxl": 6.0, "sd3": 5.0, "sd3-no-t5": 5.0, "flux": 3.5}
FAMILY = {"sd3-no-t5": "sd3"}  # pipeline case -> charkit family
CASES = ["sd15", "sdxl", "sd3", "sd3-no-t5", "flux"]
CLIP_WINDOW_CASES = ["sd15", "sdxl", "sd3", "sd3-no-t5"]  # whose embeddings hold CLIP windows
PROMPT = "a photo of a woman with red hair"
NEGATIVE = "blurry, bad"
TOKENIZER = clip_tokenizer(77)
BOS, EOS = TOKENIZER.bos_token_id, TOKENIZER.eos_token_id


def _ids(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False, verbose=False).input_ids


ONE_TOKEN_WORDS = [w for w in _WORDS if len(w) > 1 and len(_ids(w)) == 1 and w not in ("ugly", "bad", "blurry")]

# --- parser: A1111's own doctests (modules/prompt_parser.py) and edge cases --------------------------------

PARSE_CASES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
    ("((x))", [("x", 1.2100000000000002)]),
    ("[x]", [("x", 1 / 1.1)]),
    ("[[x]]", [("x", (1 / 1.1) * (1 / 1.1))]),
    ("(x:1.3)", [("x", 1.3)]),
    ("( x : 0.5 )", [(" x ", 0.5)]),
    ("[(x:1.5)]", [("x", 1.5 / 1.1)]),
    ("(word:1.0)", [("word", 1.0)]),
    ("a (word:1.0) b", [("a word b", 1.0)]),  # equal weights merge: same text as without syntax
    ("a ) b ] c", [("a ) b ] c", 1.0)]),  # stray closers are text
    ("[unbalanced", [("unbalanced", 1 / 1.1)]),
    ("a:b", [("a:b", 1.0)]),
    ("(a:b)", [("a:b", 1.1)]),  # ':' without a number is text, ')' closes with 1.1
    ("x:1.5)", [("x:1.5)", 1.0)]),  # a weight without an open '(' is text
    ("\\\\ back", [("\\ back", 1.0)]),
    ("(x:-1)", [("x", -1.0)]),
    ("", [("", 1.0)]),
]


def _pairs(chunks):
    return [(c.text, c.weight) for c in chunks if not c.is_break]


@pytest.mark.parametrize("text,expected", PARSE_CASES, ids=[c[0] or "empty" for c in PARSE_CASES])
def test_parse_matches_a1111(text, expected):
    assert _pairs(parse_a1111(text)) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("cat BREAK dog", [Chunk("cat"), BREAK, Chunk("dog")]),
        ("cat BREAKdog", [Chunk("cat BREAKdog")]),  # BREAK is a whole word, in capitals
        ("cat break dog", [Chunk("cat break dog")]),
        ("BREAK cat", [BREAK, Chunk("cat")]),
        ("(cat BREAK dog)", [Chunk("cat", 1.1), BREAK, Chunk("dog", 1.1)]),  # A1111 would weight the marker
    ],
)
def test_parse_break(text, expected):
    assert parse_a1111(text) == expected


@pytest.mark.parametrize("text", ["(x:1.2.3)", "(x:.)", "(x:..5)"])
def test_a_weight_that_is_not_a_number_is_a_clear_error(text):
    with pytest.raises(CharkitError, match="is not a number"):
        parse_a1111(text)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    st.integers(0, 5),
    st.integers(0, 5),
    st.one_of(st.none(), st.decimals(min_value="0.05", max_value="3", places=2)),
    st.sampled_from(ONE_TOKEN_WORDS),
)
def test_weights_multiply_through_nesting(rounds, squares, explicit, word):
    inner = word if explicit is None else f"({word}:{explicit})"
    text = "a " + "(" * rounds + "[" * squares + inner + "]" * squares + ")" * rounds + " b"
    expected = 1.1**rounds * (1 / 1.1) ** squares * (1.0 if explicit is None else float(explicit))
    weights = {c.text: c.weight for c in parse_a1111(text)}
    assert weights.get(word, 1.0) == pytest.approx(expected, rel=1e-12)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="()[]\\:", blacklist_categories=("Cs",)), max_size=60))
def test_text_without_syntax_round_trips(text):
    if "BREAK" in text:
        return
    assert parse_a1111(text) == [Chunk(text, 1.0)]


# --- chunking --------------------------------------------------------------------------------------------


def _words(n: int, start: int = 0) -> str:
    """``n`` tiny-vocab words, one token each, no commas."""
    return " ".join(ONE_TOKEN_WORDS[(start + i) % len(ONE_TOKEN_WORDS)] for i in range(n))


@settings(derandomize=True, max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=6))
def test_break_count_sets_chunk_count(sizes):
    segments = [_words(n, start=i) for i, n in enumerate(sizes)]
    chunks = tokenize_chunks(parse_a1111(" BREAK ".join(segments)), TOKENIZER)
    assert len(chunks) == len(sizes)
    assert [c.length for c in chunks] == [len(_ids(s)) for s in segments]


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(ONE_TOKEN_WORDS + [",", "(red:1.3)", "[blue]", "BREAK", "xq"]), max_size=250))
def test_chunking_keeps_every_token_in_77_token_windows(words):
    text = " ".join(words)
    parsed = parse_a1111(text)
    chunks = tokenize_chunks(parsed, TOKENIZER)
    expected = [t for c in parsed if not c.is_break for t in _ids(c.text)]
    assert [t for c in chunks for t in c.ids[1 : 1 + c.length]] == expected  # nothing lost, nothing added
    for c in chunks:
        assert len(c.ids) == len(c.weights) == 77
        assert c.ids[0] == BOS and c.ids[1 + c.length] == EOS and 0 <= c.length <= 75
        assert c.weights[0] == c.weights[1 + c.length] == 1.0
        assert all(w == 1.0 for w in c.weights[2 + c.length :])
    assert len(chunks) >= 1


def test_weights_follow_their_tokens():
    (chunk,) = tokenize_chunks(parse_a1111("a (red:1.5) [dress]"), TOKENIZER)
    assert chunk.weights[1 : 1 + chunk.length] == (1.0, 1.5, *[1 / 1.1] * len(_ids("dress")))


def test_a_full_window_moves_the_words_after_its_last_comma_to_the_next():
    # 70 words, a comma, 10 more words: the window fills at 75 with the comma 4 back -> A1111 moves 4 words on.
    text = _words(70) + ", " + _words(10, start=70)
    first, second = tokenize_chunks(parse_a1111(text), TOKENIZER)
    assert first.length == 71 and first.ids[71] == _ids(",")[0]
    assert second.length == 10


# --- embeddings on tiny pipelines ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipes():
    """``get(case) -> in-memory tiny pipeline``; "sd3-no-t5" is the tiny SD3 without its T5 encoder."""
    cache: dict = {}

    def get(case: str):
        if case not in cache:
            if case == "sd3-no-t5":
                from diffusers import StableDiffusion3Pipeline

                full = get("sd3")
                pipe = StableDiffusion3Pipeline(**{**full.components, "text_encoder_3": None, "tokenizer_3": None})
            else:
                pipe = get_family(case).tiny_pipeline()
            pipe.set_progress_bar_config(disable=True)
            cache[case] = pipe
        return cache[case]

    return get


def _render(case, pipe, *, seed=0, num_images=1, **kw) -> list[bytes]:
    generator = [torch.Generator().manual_seed(seed + i) for i in range(num_images)] if num_images > 1 else None
    out = pipe(
        width=SIZE,
        height=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=kw.pop("guidance_scale", GUIDANCE[case]),
        generator=generator or torch.Generator().manual_seed(seed),
        **kw,
    )
    return [img.tobytes() for img in out.images]


def _embeds(case, pipe, prompt, negative=NEGATIVE, **options):
    if FAMILY.get(case, case) == "flux":
        negative = None if negative == NEGATIVE else negative  # Flux takes a negative only with true CFG
    return encode_prompt(FAMILY.get(case, case), pipe, prompt, negative, **options)


def _ours(case, pipe, prompt, negative=NEGATIVE, *, num_images=1, **options):
    extra = {"true_cfg_scale": 2.0} if FAMILY.get(case, case) == "flux" and negative not in (None, NEGATIVE) else {}
    kwargs = _embeds(case, pipe, prompt, negative, **options).pipeline_kwargs(num_images)
    return _render(case, pipe, num_images=num_images, **kwargs, **extra)


def _theirs(case, pipe, prompt, negative=NEGATIVE, **kw):
    if FAMILY.get(case, case) != "flux":
        kw["negative_prompt"] = negative
    return _render(case, pipe, prompt=prompt, **kw)


@contextlib.contextmanager
def logged_warnings():
    """Warnings that diffusers and transformers log (their loggers do not propagate to the root)."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep(level=logging.WARNING)
    loggers = [logging.getLogger("diffusers"), logging.getLogger("transformers")]
    levels = [lg.level for lg in loggers]  # another test (a quiet CLI run) may have silenced them
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.WARNING)
    try:
        yield records
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)


@pytest.mark.parametrize("case", CASES)
def test_plain_prompt_is_exactly_diffusers_prompt_path(case, pipes):
    pipe = pipes(case)
    assert _ours(case, pipe, PROMPT) == _theirs(case, pipe, PROMPT)


@pytest.mark.parametrize("case", CASES)
def test_weight_one_is_exactly_the_plain_word(case, pipes):
    pipe = pipes(case)
    assert _ours(case, pipe, "a (photo:1.0) of a (woman:1.0) with red hair") == _ours(case, pipe, PROMPT)


@pytest.mark.parametrize("case", CASES)
def test_a_weight_changes_pixels(case, pipes):
    pipe = pipes(case)
    assert _ours(case, pipe, "a photo of a (woman:1.5) with red hair") != _ours(case, pipe, PROMPT)


@pytest.mark.parametrize("case", CASES)
def test_a_150_token_prompt_is_encoded_whole(case, pipes):
    pipe = pipes(case)
    long, first = _words(150), _words(75)
    assert len(_ids(long)) == 150 and len(_ids(first)) == 75
    with logged_warnings() as warnings:
        embeds = _embeds(case, pipe, long)
        image = _render(case, pipe, **embeds.pipeline_kwargs())
    assert warnings == []
    assert embeds.tokens == (150,)
    if case in CLIP_WINDOW_CASES:
        assert embeds.chunks == 2
    assert image != _ours(case, pipe, first)


def test_diffusers_own_path_truncates_the_same_prompt(pipes):
    # what the test above guards against, seen through the same log capture
    pipe = pipes("sd15")
    with logged_warnings() as warnings:
        truncated = _theirs("sd15", pipe, _words(150))
    assert any("truncated" in w for w in warnings)
    assert truncated == _theirs("sd15", pipe, _words(75))


@pytest.mark.parametrize("case", CASES)
def test_break_starts_a_new_chunk(case, pipes):
    pipe = pipes(case)
    broken = _embeds(case, pipe, "a photo of a woman BREAK with red hair")
    if case in CLIP_WINDOW_CASES:
        assert broken.chunks == 2 and _embeds(case, pipe, PROMPT).chunks == 1
    assert _render(case, pipe, **broken.pipeline_kwargs()) != _ours(case, pipe, PROMPT)


@pytest.mark.parametrize("case", CASES)
def test_a_negative_prompt_longer_than_the_prompt(case, pipes):
    pipe = pipes(case)
    negative = _words(150, start=3)
    embeds = _embeds(case, pipe, PROMPT, negative)
    assert embeds.prompt_embeds.shape == embeds.negative_prompt_embeds.shape
    if case in CLIP_WINDOW_CASES:
        assert embeds.chunks == 2
    image = _ours(case, pipe, PROMPT, negative)
    assert image != _ours(case, pipe, PROMPT, _words(75, start=3))


@pytest.mark.parametrize("case", ["sd15", "sdxl", "sd3", "sd3-no-t5"])
def test_clip_skip_one_is_the_default_and_two_changes_pixels(case, pipes):
    pipe = pipes(case)
    default = _ours(case, pipe, PROMPT)
    assert _ours(case, pipe, PROMPT, clip_skip=1) == default
    assert _ours(case, pipe, PROMPT, clip_skip=2) != default


def test_sd15_clip_skip_2_is_the_penultimate_layer_through_the_final_layer_norm(pipes):
    pipe = pipes("sd15")
    ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
        expected = pipe.text_encoder.final_layer_norm(hidden[-2])
    assert torch.equal(encode_sd15(pipe, PROMPT, clip_skip=2).prompt_embeds, expected)
    assert torch.equal(encode_sd15(pipe, PROMPT).prompt_embeds, pipe.encode_prompt(PROMPT, "cpu", 1, False)[0])


@pytest.mark.parametrize("case", ["sdxl", "sd3"])
def test_clip_skip_2_is_diffusers_clip_skip_1(case, pipes):
    # diffusers counts layers skipped beyond the default; A1111 (and charkit) count from the last layer.
    # No negative prompt here: diffusers ignores clip_skip on the negative side (SDXL zeroes it, SD3 at CFG 1).
    pipe = pipes(case)
    kw = {"guidance_scale": 1.0} if case == "sd3" else {}
    embeds = encode_prompt(case, pipe, PROMPT, None, clip_skip=2)
    assert _render(case, pipe, **embeds.pipeline_kwargs(), **kw) == _render(
        case, pipe, prompt=PROMPT, clip_skip=1, **kw
    )


@pytest.mark.parametrize("case", CASES)
def test_a_batch_of_prompts_is_diffusers_batch(case, pipes):
    pipe = pipes(case)
    prompts = [PROMPT, "a man standing in the city at night"]
    embeds = _embeds(case, pipe, prompts)
    assert embeds.batch_size == 2
    ours = _render(case, pipe, num_images=4, **embeds.pipeline_kwargs(2))
    if FAMILY.get(case, case) == "flux":
        theirs = _render(case, pipe, num_images=4, prompt=prompts, num_images_per_prompt=2)
    else:
        theirs = _render(
            case, pipe, num_images=4, prompt=prompts, negative_prompt=[NEGATIVE] * 2, num_images_per_prompt=2
        )
    assert ours == theirs
    assert len(ours) == 4 and len(set(ours)) == 4


def test_sd3_and_flux_embeddings_come_repeated_because_their_pipelines_do_not_repeat_them(pipes):
    for kwargs in (
        encode_sd3(pipes("sd3"), PROMPT).pipeline_kwargs(3),
        encode_flux(pipes("flux"), PROMPT).pipeline_kwargs(3),
    ):
        assert kwargs["num_images_per_prompt"] == 1
        assert kwargs["prompt_embeds"].shape[0] == kwargs["pooled_prompt_embeds"].shape[0] == 3
    sd15 = encode_sd15(pipes("sd15"), PROMPT).pipeline_kwargs(3)
    assert sd15["num_images_per_prompt"] == 3 and sd15["prompt_embeds"].shape[0] == 1


def test_flux_weights_act_on_t5_and_leave_the_clip_pooled_output_alone(pipes):
    pipe = pipes("flux")
    plain, weighted = encode_flux(pipe, PROMPT), encode_flux(pipe, "a photo of a (woman:1.5) with red hair")
    assert torch.equal(plain.pooled_prompt_embeds, weighted.pooled_prompt_embeds)
    assert not torch.equal(plain.prompt_embeds, weighted.prompt_embeds)
    assert plain.negative_prompt_embeds is None and "negative_prompt_embeds" not in plain.pipeline_kwargs()


def test_sd3_without_t5_fills_the_t5_part_with_zeros(pipes):
    pipe = pipes("sd3-no-t5")
    embeds = encode_sd3(pipe, "a (photo:1.4) of a woman", max_sequence_length=64)
    assert embeds.prompt_embeds.shape[1] == 77 + 64
    assert not embeds.prompt_embeds[:, 77:].any()
    assert embeds.prompt_embeds[:, :77].any()


def test_sdxl_without_negative_prompt_gives_zeros_like_diffusers(pipes):
    pipe = pipes("sdxl")
    embeds = encode_sdxl(pipe, _words(100))
    assert embeds.negative_prompt_embeds.shape == embeds.prompt_embeds.shape
    assert not embeds.negative_prompt_embeds.any() and not embeds.negative_pooled_prompt_embeds.any()
    assert _render("sdxl", pipe, **encode_sdxl(pipe, PROMPT).pipeline_kwargs()) == _render("sdxl", pipe, prompt=PROMPT)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda p: encode_flux(p("flux"), PROMPT, clip_skip=2), "Flux reads only CLIP's pooled output"),
        (lambda p: encode_sd15(p("sd15"), PROMPT, clip_skip=3), r"clip_skip=3: must be a whole number from 1"),
        (lambda p: encode_sd15(p("sd15"), PROMPT, clip_skip=0), r"clip_skip=0"),
        (lambda p: encode_sd3(p("sd3"), _words(40), max_sequence_length=16), "41 T5 tokens, more than"),
        (lambda p: encode_flux(p("flux"), PROMPT, max_sequence_length=1024), "max_sequence_length=1024"),
        (lambda p: encode_sd15(p("sd15"), [PROMPT, PROMPT], ["a", "b", "c"]), "3 negative prompts for 2 prompts"),
        (lambda p: encode_sd15(p("sd15"), []), "non-empty list"),
        (lambda p: encode_prompt("sd2", p("sd15"), PROMPT), "unknown model family 'sd2'"),
    ],
)
def test_bad_options_are_clear_errors(call, match, pipes):
    with pytest.raises(CharkitError, match=match):
        call(pipes)


def test_embeddings_work_with_controlnet_and_ip_adapter(tiny_models):
    """The wiring generate() will use: embeddings + ControlNet image + FaceID embeds + 2 images per prompt."""
    m = get_family("sd15")
    tiny = tiny_models("sd15")
    pipe = m.load_pipeline(tiny.root, controlnet=tiny.controlnet)
    m.load_ip_adapter(pipe, tiny.faceid, mode="face")
    face = torch.nn.functional.normalize(torch.randn(512, generator=torch.Generator().manual_seed(3)), dim=0)
    control = np.random.RandomState(0).randint(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    from PIL import Image

    extra = dict(image=Image.fromarray(control), ip_adapter_image_embeds=m.faceid_embeds(face, guidance=7.0))
    ours = _render("sd15", pipe, num_images=2, **encode_sd15(pipe, PROMPT, NEGATIVE).pipeline_kwargs(2), **extra)
    theirs = _render(
        "sd15", pipe, num_images=2, prompt=PROMPT, negative_prompt=NEGATIVE, num_images_per_prompt=2, **extra
    )
    assert ours == theirs
    weighted = encode_sd15(pipe, "(" + _words(120) + ":1.2)", NEGATIVE, clip_skip=2).pipeline_kwargs(2)
    assert _render("sd15", pipe, num_images=2, **weighted, **extra) != ours


def test_flux_embeddings_work_with_ip_adapter_for_a_batch(tiny_models):
    """Flux leaves given embeddings unrepeated; repeated by pipeline_kwargs they match the prompt= path,
    IP-Adapter image included (2 prompts x 2 images)."""
    from PIL import Image

    m = get_family("flux")
    tiny = tiny_models("flux")
    pipe = m.load_pipeline(tiny.root)
    m.load_ip_adapter(pipe, tiny.ip_adapter, mode="image")
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    prompts = [PROMPT, "a man standing in the city at night"]
    kwargs = encode_flux(pipe, prompts).pipeline_kwargs(2)
    ours = _render("flux", pipe, num_images=4, ip_adapter_image=image, **kwargs)
    theirs = _render("flux", pipe, num_images=4, ip_adapter_image=image, prompt=prompts, num_images_per_prompt=2)
    assert ours == theirs

"""The checkpoint choice: gates, probe noise, the no-LoRA baseline, and the overfitting guards on real photos.

The guards are measured on real photos scored by dlib (a "probe set" made of the training photos themselves
must read as memorised, other photos of the same man must not); the rule itself runs on a table of synthetic
CheckpointScores whose probes carry per-probe similarities, as the bootstrap needs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from charkit.errors import CharkitError
from charkit.train.evaluate import (
    CheckpointScore,
    ProbeResult,
    ProbeSpec,
    choose_checkpoint,
    identity_gain,
    score_probes,
    summarize,
)
from charkit.train.overfit import mark_probes, training_photos

FACES = Path(__file__).parent / "data" / "faces"
TRAINING = ("obama.jpg", "obama2.jpg")  # the photos the LoRA trained on


@pytest.fixture(scope="module")
def dlib_setup():
    from charkit.identity import build_profile, get_backend

    backend = get_backend("dlib")
    profile = build_profile("obama", [FACES / n for n in TRAINING], backend)  # the references are the training photos
    return backend, profile, training_photos([FACES / n for n in TRAINING], backend)


def probe_score(step: int, files: list[str], setup, *, prompts: list[str] | None = None) -> CheckpointScore:
    """A checkpoint whose probe renders are these real photos (prompt i, seed 1), scored like a training run."""
    backend, profile, photos = setup
    prompts = prompts or [f"prompt {i}" for i in range(len(files))]
    specs = [ProbeSpec(index=i, prompt=p, text=p, seed=1) for i, p in enumerate(prompts)]
    images = []
    for f in files:
        with Image.open(FACES / f) as im:
            rgb = im.convert("RGB")
        rgb.thumbnail((640, 640))  # a probe-sized render of the photo (and 4x faster for dlib)
        images.append(rgb)
    probes = score_probes(images, specs, files, profile=profile, backend=backend)
    mark_probes(images, probes, photos, backend)
    return summarize(step, probes, baseline=step == 0)


# ------------------------------------------------------------------------------------------- guards


def test_memorisation_guard_on_real_photos(dlib_setup):
    """The training photos (and a re-saved copy) read as memorised; another photo of the same man does not."""
    copies = probe_score(200, ["obama.jpg", "obama2.jpg", "32bit.png"], dlib_setup)
    assert [p.memorized for p in copies.probes] == [True, True, True], [
        (p.copy_face, p.copy_hash) for p in copies.probes
    ]
    assert [p.nearest for p in copies.probes] == ["obama.jpg", "obama2.jpg", "obama2.jpg"]
    assert copies.memorized_rate == 1.0
    fresh = probe_score(100, ["obama3.jpg", "biden.jpg"], dlib_setup)
    assert [p.memorized for p in fresh.probes] == [False, False]
    assert fresh.probes[0].status == "pass" and fresh.probes[0].copy_face > 0.5  # the same man, another photo
    assert fresh.memorized_rate == 0.0


def test_prompt_diversity_guard_on_real_photos(dlib_setup):
    """Probes of different prompts that are one picture are 'alike' (1.0); different photos are not (~0.5)."""
    collapsed = probe_score(200, ["obama3.jpg", "obama3.jpg", "obama3.jpg"], dlib_setup)
    diverse = probe_score(100, ["obama3.jpg", "biden.jpg", "obama.jpg"], dlib_setup)
    assert collapsed.prompt_similarity == 1.0
    assert 0.3 < diverse.prompt_similarity < 0.7
    baseline = probe_score(0, ["biden.jpg", "obama.jpg", "obama3.jpg"], dlib_setup)
    choice = choose_checkpoint([diverse, collapsed], baseline=baseline)
    assert choice.step == 100 and "look alike" in choice.excluded[200]


def test_chooser_picks_the_earlier_checkpoint_when_a_later_one_only_memorises(dlib_setup):
    """Step 200 scores higher identity because its probes ARE the training photos: it must lose to step 100."""
    baseline = probe_score(0, ["biden.jpg", "biden.jpg", "biden.jpg"], dlib_setup)  # the base model: not him
    early = probe_score(100, ["obama3.jpg", "obama3.jpg", "obama3.jpg"], dlib_setup)  # him, in a new picture
    late = probe_score(200, ["obama.jpg", "obama2.jpg", "32bit.png"], dlib_setup)  # the training photos again
    assert late.identity > early.identity and late.memorized_rate > 0.25
    choice = choose_checkpoint([early, late], baseline=baseline)
    assert choice.step == 100 and choice.measured
    assert "copies of training photos" in choice.excluded[200]
    assert choice.gains[100] > 0.2 and "gain over the no-LoRA baseline" in choice.reason
    # Without the guard (max_memorized = 1), the memorising checkpoint would have won on identity.
    assert choose_checkpoint([early, late], baseline=baseline, max_memorized=1.0).step == 200


# ---------------------------------------------------------------------------------------------- rule


def probes(sims, *, memorized=None) -> list[ProbeResult]:
    out = []
    for i, s in enumerate(sims):
        p = ProbeResult(f"prompt {i // 2}", i % 2, f"p{i}.png", "no_face" if s is None else "pass", s, None)
        p.memorized = None if memorized is None else memorized[i]
        out.append(p)
    return out


def score(step, sims, *, adherence=None, prompt_similarity=0.5, memorized=None) -> CheckpointScore:
    s = summarize(step, probes(sims, memorized=memorized))
    s.adherence, s.prompt_similarity = adherence, prompt_similarity
    return s


BASE = score(0, [0.1, 0.15, 0.05, 0.12, 0.08, 0.1, 0.11, 0.09])
NOISY = [0.50, 0.62, 0.41, 0.58, 0.47, 0.66, 0.44, 0.55]  # mean 0.529, spread +-0.09
WOBBLE = (0.05, -0.05, 0.06, -0.04, 0.05, -0.05, 0.04, -0.03)  # probe-to-probe noise of about 0.05

# (label, checkpoints, keyword arguments, expected step, text in the reason / excluded)
RULE_CASES = [
    (
        "noise",
        [
            score(100, NOISY),
            score(200, [v + d for v, d in zip(NOISY, WOBBLE)]),
        ],
        {},
        100,
        "did not beat it beyond probe noise",
    ),
    ("real gain", [score(100, NOISY), score(200, [v + 0.08 for v in NOISY])], {}, 200, "beat step 100"),
    (
        "face rate",
        [score(100, NOISY), score(200, [0.9, None, None, None, 0.9, None, None, None])],
        {},
        100,
        "faces in 25%",
    ),
    (
        "memorised",
        [score(100, NOISY), score(200, [v + 0.2 for v in NOISY], memorized=[True] * 4 + [False] * 4)],
        {},
        100,
        "copies of training photos",
    ),
    (
        "collapsed",
        [score(100, NOISY), score(200, [v + 0.2 for v in NOISY], prompt_similarity=0.9)],
        {},
        100,
        "look alike",
    ),
    (
        "adherence",
        [score(100, NOISY, adherence=30.0), score(200, [v + 0.2 for v in NOISY], adherence=25.0)],
        {},
        100,
        "CLIP adherence",
    ),
    (
        "all gated",
        [score(100, NOISY, prompt_similarity=0.95), score(200, NOISY, prompt_similarity=0.95)],
        {},
        100,
        "every checkpoint failed a gate",
    ),
    ("no faces", [score(100, [None] * 8), score(200, [None] * 8)], {}, 200, "could not be measured"),
    (
        "three steps",
        [
            score(100, NOISY),
            score(200, [v + 0.08 for v in NOISY]),
            score(300, [v + 0.09 + d for v, d in zip(NOISY, WOBBLE)]),
        ],
        {},
        200,
        "later step(s) 300",
    ),
]


@pytest.mark.parametrize("label, scores, kw, expected, text", RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_choice_rule(label, scores, kw, expected, text):
    choice = choose_checkpoint(scores, baseline=BASE, **kw)
    assert choice.step == expected, choice.reason
    assert text in choice.reason or any(text in v for v in choice.excluded.values()), (choice.reason, choice.excluded)
    assert set(choice.gains) == {s.step for s in scores}
    d = choice.to_dict()
    assert d["step"] == expected and d["rule"] and isinstance(d["comparisons"], list)


def test_identity_gain_interval_and_baseline_note():
    later, earlier = score(200, [v + 0.08 for v in NOISY]), score(100, NOISY)
    gain, low, high = identity_gain(later, earlier)
    assert gain == pytest.approx(0.08) and 0 < low <= gain + 1e-9 and high >= gain - 1e-9
    gain, low, high = identity_gain(score(2, [0.5, 0.6]), score(1, [0.4, None]))  # 1 face on one side: no interval
    assert low is None and high is None
    # A LoRA no better than the base model says so.
    flat = choose_checkpoint([score(100, [0.12, 0.1, 0.11, 0.09, 0.1, 0.12, 0.08, 0.1])], baseline=BASE)
    assert "within noise: the LoRA may not have learnt the face" in flat.reason


def test_choice_errors_name_the_real_cause():
    with pytest.raises(CharkitError, match="were saved but none has probe scores.*--resume"):
        choose_checkpoint([], saved=[250, 500])
    with pytest.raises(CharkitError, match="no checkpoint was saved"):
        choose_checkpoint([])


_score = st.builds(
    lambda step, base, n_faces, spread, adh, sim: (step, base, n_faces, spread, adh, sim),
    st.integers(1, 10_000),
    st.floats(-0.5, 0.9),
    st.integers(0, 6),
    st.floats(0.0, 0.2),
    st.one_of(st.none(), st.floats(0.0, 40.0)),
    st.floats(0.3, 1.0),
)


@settings(derandomize=True, max_examples=150, deadline=None)
@given(st.lists(_score, min_size=1, max_size=6, unique_by=lambda t: t[0]), st.floats(0.0, 10.0))
def test_chooser_invariants(rows, tol):
    rng = np.random.default_rng(0)
    scores = []
    all_adh = all(r[4] is not None for r in rows)
    for step, base, n_faces, spread, adh, sim in rows:
        sims = [float(base + spread * rng.standard_normal()) for _ in range(n_faces)] + [None] * (6 - n_faces)
        scores.append(score(step, sims, adherence=adh if all_adh else None, prompt_similarity=sim))
    c = choose_checkpoint(scores, baseline=score(0, [0.0] * 6), adherence_tolerance=tol)
    by = {s.step: s for s in scores}
    assert c.step in by and set(c.candidates) | set(c.excluded) == set(by)
    assert not set(c.candidates) & set(c.excluded)
    if c.candidates:  # the chosen one passed every gate, and no later one beat it
        assert c.step in c.candidates
        assert not any(x.won for x in c.comparisons if x.against == c.step and x.step > c.step)
    elif any(s.identity is not None for s in scores):  # everything gated: the earliest with faces
        assert c.step == min(s.step for s in scores if s.identity is not None)
    else:
        assert c.step == max(by) and not c.measured

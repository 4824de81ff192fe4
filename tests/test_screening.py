"""Reference screening (charkit.identity.screening) on real photos: one routine for prep and for profiles.

Tables of (reference set -> what is a duplicate / an outlier), with dlib and SFace embeddings of the
public-domain photos in tests/data/faces (obama*.jpg: one person; 32bit.png: obama2.jpg re-saved as RGBA;
biden.jpg: another person).
"""

from __future__ import annotations

import numpy as np
import pytest

from charkit.identity import screening
from charkit.images import load_image


@pytest.fixture(scope="module")
def embed(faces_dir, dlib_backend):
    cache: dict = {}

    def get(name: str, backend=dlib_backend) -> np.ndarray:
        key = (name, backend.info.name)
        if key not in cache:
            img = load_image(faces_dir / name).image
            cache[key] = backend.analyze(np.asarray(img))[0].embedding
        return cache[key]

    return get


DUPLICATES = [
    # (references, prep's fraction or profile's, expected {duplicate: kept})
    (["obama2.jpg", "32bit.png"], "profile", {1: 0}),  # the same photo re-saved
    (["obama2.jpg", "32bit.png"], "prep", {1: 0}),
    (["obama.jpg", "obama2.jpg", "obama3.jpg"], "profile", {}),  # three different photos of one person
    (["obama.jpg", "obama2.jpg", "obama3.jpg"], "prep", {}),
    (["obama.jpg", "biden.jpg"], "prep", {}),
    (["32bit.png", "obama.jpg", "obama2.jpg", "biden.jpg"], "profile", {2: 0}),  # the first copy stays
]


@pytest.mark.parametrize("refs,caller,expected", DUPLICATES)
def test_duplicates(embed, dlib_backend, refs, caller, expected):
    fraction = screening.PREP_DUPLICATE_FRACTION if caller == "prep" else screening.PROFILE_DUPLICATE_FRACTION
    bar = screening.duplicate_similarity(dlib_backend.info.threshold, fraction)
    vecs = [embed(r) for r in refs]
    assert screening.find_duplicates(vecs, dlib_backend, min_similarity=bar) == expected


def test_the_two_bars_sit_between_different_photos_and_copies(embed, dlib_backend):
    # Different photos of one person stay below both bars and a re-saved copy above both; the bars differ
    # only in how close a *different* photo may come before it needs prep's perceptual-hash check as well.
    t = dlib_backend.info.threshold
    prep_bar = screening.duplicate_similarity(t, screening.PREP_DUPLICATE_FRACTION)
    profile_bar = screening.duplicate_similarity(t, screening.PROFILE_DUPLICATE_FRACTION)
    different = max(
        dlib_backend.similarity(embed(a), embed(b))
        for a, b in (("obama.jpg", "obama2.jpg"), ("obama.jpg", "obama3.jpg"), ("obama2.jpg", "obama3.jpg"))
    )
    resaved = dlib_backend.similarity(embed("obama2.jpg"), embed("32bit.png"))
    assert different < prep_bar < profile_bar < resaved


def test_same_picture_must_agree(embed, dlib_backend):
    vecs = [embed("obama2.jpg"), embed("32bit.png")]
    assert screening.find_duplicates(vecs, dlib_backend, min_similarity=0.5, same_picture=lambda i, k: False) == {}


def test_visit_order_decides_which_copy_stays(embed, dlib_backend):
    vecs = [embed("obama2.jpg"), embed("32bit.png")]
    assert screening.find_duplicates(vecs, dlib_backend, min_similarity=0.9, order=[1, 0]) == {0: 1}


OUTLIERS = [
    # (references, backend, expected outlier indices)
    (["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"], "dlib", [3]),
    (["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"], "sface", [3]),
    (["obama.jpg", "obama2.jpg", "obama3.jpg"], "dlib", []),
    (["obama.jpg", "biden.jpg"], "dlib", []),  # two references: no majority to disagree with
]


@pytest.mark.parametrize("refs,backend,expected", OUTLIERS)
def test_outliers(embed, dlib_backend, sface_backend, refs, backend, expected):
    fb = dlib_backend if backend == "dlib" else sface_backend
    vecs = np.stack([embed(r, fb) for r in refs])
    found = screening.find_outliers(vecs, fb, threshold=fb.info.threshold)
    assert sorted(found) == expected
    assert all(v < fb.info.threshold for v in found.values())


def test_prep_and_profile_agree_on_a_real_reference_set(tmp_path, faces_dir, dlib_backend):
    # One folder, both callers: the profile leaves out exactly the references prep rejects as outlier/duplicate.
    import shutil

    from charkit.character import CharacterSpec, load_character, save_spec
    from charkit.dataset import prep_dataset
    from charkit.identity import profile_for_character

    d = tmp_path / "obama"
    (d / "refs").mkdir(parents=True)
    for n in ("obama.jpg", "obama2.jpg", "obama3.jpg", "32bit.png", "biden.jpg"):
        shutil.copy(faces_dir / n, d / "refs" / n)
    save_spec(d, CharacterSpec(name="obama", trigger=["ohwx"], class_word="man"))
    prep = prep_dataset(d, family="sd15", resolution=64, backend=dlib_backend, cache=False)
    profile = profile_for_character(load_character(d), dlib_backend)
    prep_out = {r.path.split("/")[-1]: r.reason.split(" ")[0] for r in prep.rejected}
    profile_out = {p.split("/")[-1]: "identity_outlier" for p in profile.outliers}
    profile_out.update({r.path.split("/")[-1]: r.reason.split(" ")[0] for r in profile.rejected})
    # The same copy pair and the same stranger; which copy stays may differ (documented): the profile keeps
    # the first reference in file order, prep the larger (then sharper) file, the better training crop.
    for out in (prep_out, profile_out):
        dropped = [n for n, why in out.items() if why == "near_duplicate"]
        assert len(dropped) == 1 and dropped[0] in ("obama2.jpg", "32bit.png")
        assert {n: why for n, why in out.items() if n not in dropped} == {"biden.jpg": "identity_outlier"}

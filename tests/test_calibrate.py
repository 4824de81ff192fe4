"""`charkit calibrate`: same- vs different-person similarity on real photos, and the suggested threshold."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from fixtures_faces import make_character

from charkit.cli import cli
from charkit.identity.calibrate import misclassified, suggest_threshold


def test_calibrate_real_cast(tmp_path):
    make_character(tmp_path, "obama", ["obama.jpg", "obama2.jpg", "obama3.jpg"])
    make_character(tmp_path, "biden", ["biden.jpg"])
    r = CliRunner().invoke(
        cli, ["calibrate", "-c", str(tmp_path / "obama"), "-c", str(tmp_path / "biden"), "--backend", "dlib", "--json"]
    )
    assert r.exit_code == 0, r.output
    c = json.loads(r.stdout)
    assert c["same"]["pairs"] == 3 and c["different"]["pairs"] == 3
    # measured: same person 0.58-0.68, different people 0.15-0.20
    assert c["same"]["min"] > 0.5 and c["different"]["max"] < 0.3 and c["separable"]
    assert c["different"]["max"] < c["suggested_threshold"] < c["same"]["min"]
    assert c["errors_at_suggested"] == 0 and c["errors_at_default"] == 0


def test_mislabelled_reference_shows_as_errors(tmp_path):
    # a Biden photo filed under obama: its pairs are "same" pairs far below the others
    make_character(tmp_path, "obama", ["obama.jpg", "obama2.jpg", "biden.jpg"])
    make_character(tmp_path, "other", ["obama3.jpg"])
    r = CliRunner().invoke(
        cli, ["calibrate", "-c", str(tmp_path / "obama"), "-c", str(tmp_path / "other"), "--backend", "dlib", "--json"]
    )
    c = json.loads(r.stdout)
    assert not c["separable"] and c["errors_at_suggested"] >= 2


def test_calibrate_needs_two_characters(tmp_path):
    make_character(tmp_path, "obama", ["obama.jpg", "obama2.jpg"])
    r = CliRunner().invoke(cli, ["calibrate", "-c", str(tmp_path / "obama"), "--backend", "dlib"])
    assert r.exit_code == 2 and "at least two characters" in r.output


@pytest.mark.parametrize(
    "same,different,expected",
    [
        ([0.6, 0.7], [0.1, 0.2], 0.4),  # a clean gap: its midpoint
        ([0.3, 0.6, 0.7], [0.1, 0.35], None),  # overlap: fewest errors (one pair on the wrong side)
    ],
)
def test_suggest_threshold(same, different, expected):
    t = suggest_threshold(same, different)
    if expected is not None:
        assert t == pytest.approx(expected)
    best = min(misclassified(same, different, x / 100) for x in range(101))
    assert misclassified(same, different, t) == best


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

sims = st.lists(st.floats(min_value=-1, max_value=1, allow_nan=False), min_size=1, max_size=12)


@settings(max_examples=150, derandomize=True)
@given(same=sims, different=sims)
def test_suggested_threshold_is_never_beaten(same, different):
    t = suggest_threshold(same, different)
    cuts = sorted(set(same) | set(different))
    probes = [cuts[0] - 1, cuts[-1] + 1] + [(a + b) / 2 for a, b in zip(cuts, cuts[1:])]
    assert misclassified(same, different, t) <= min(misclassified(same, different, x) for x in probes)

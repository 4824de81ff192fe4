"""Deliberate copies between family folders stay copies (charkit.testing.check_copies)."""

from __future__ import annotations

import textwrap

import pytest

from charkit.testing import check_copies


def test_every_marked_copy_matches_its_source():
    drifted = check_copies.check()
    assert not drifted, "\n".join(c.diff() for c in drifted) + "\nrun `make fix-copies`"


def test_the_family_folders_use_the_markers():
    # The check is not vacuous: the family pipelines are copies of sd15's on purpose.
    copies = [
        c for f in sorted(check_copies.PACKAGE_ROOT.glob("families/*/pipeline.py")) for c in check_copies.copies_in(f)
    ]
    assert {c.target for c in copies} >= {
        "charkit.families.sd15.pipeline.generate",
        "charkit.families.sd15.pipeline.load_pipeline",
    }


def _package(tmp_path, copy_body: str):
    pkg = tmp_path / "charkit"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        textwrap.dedent(
            '''
            def greet(name):
                """Say hello to the SD1.5 user."""
                return f"hello {name} from sd15"
            '''
        )
    )
    (pkg / "b.py").write_text(textwrap.dedent(copy_body))
    return pkg


def test_a_drifted_copy_is_found_and_fixed(tmp_path):
    pkg = _package(
        tmp_path,
        '''
        # Copied from charkit.a.greet with sd15->sdxl, SD1.5->SDXL
        def greet(name):
            """Say hello to the SDXL user."""
            return f"hi {name} from sdxl"
        ''',
    )
    drifted = check_copies.check(pkg)
    assert [c.target for c in drifted] == ["charkit.a.greet"]
    assert '-    return f"hello {name} from sdxl"' in drifted[0].diff()
    check_copies.check(pkg, fix=True)
    assert 'return f"hello {name} from sdxl"' in (pkg / "b.py").read_text()
    assert check_copies.check(pkg) == []


def test_replacements_apply_in_order_and_indentation_follows_the_copy(tmp_path):
    pkg = _package(
        tmp_path,
        '''
        class Family:
            # Copied from charkit.a.greet with sd15->sdxl, SD1.5->SDXL
            def greet(name):
                """Say hello to the SDXL user."""
                return f"hello {name} from sdxl"
        ''',
    )
    assert check_copies.check(pkg) == []


def test_a_marker_must_sit_above_a_definition(tmp_path):
    pkg = _package(tmp_path, "# Copied from charkit.a.greet\nX = 1\n")
    with pytest.raises(ValueError, match="above a def or class"):
        check_copies.check(pkg)


def test_an_unknown_target_is_an_error(tmp_path):
    pkg = _package(tmp_path, "# Copied from charkit.a.nothing\ndef nothing():\n    pass\n")
    with pytest.raises(ValueError, match="not found"):
        check_copies.check(pkg)

"""Names never escape the output root; atomic writes never leave half files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charkit.errors import CharkitError
from charkit.paths import atomic_open, atomic_write_json, check_name, under_root


@settings(max_examples=200, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=0, max_size=40))
def test_checked_names_stay_under_root(name, tmp_path):
    try:
        check_name(name)
    except CharkitError:
        return
    target = under_root(tmp_path, name)
    assert target.parent == tmp_path.resolve()
    assert not name.startswith(".") and "/" not in name and "\\" not in name


@pytest.mark.parametrize("parts", [("..", "x"), ("/etc/passwd",), ("a", "..", "..", "b")])
def test_under_root_refuses_escapes(parts, tmp_path):
    with pytest.raises(CharkitError, match="escapes the output folder"):
        under_root(tmp_path, *parts)


def test_under_root_refuses_symlink_escape(tmp_path):
    (tmp_path / "link").symlink_to("/")
    with pytest.raises(CharkitError):
        under_root(tmp_path, "link", "etc")


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(RuntimeError), atomic_open(target, "w") as f:
        f.write('{"half": ')
        raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "ok": 1\n}\n'
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_atomic_write_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", {"loss": float("nan")})
    assert not (tmp_path / "x.json").exists()
    assert list(Path(tmp_path).iterdir()) == []

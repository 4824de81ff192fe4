"""Stage files are typed on both sides: one model per file, one-line errors naming file and field."""

from __future__ import annotations

import json

import pytest

from charkit.errors import CharkitError
from charkit.stagefiles import (
    FORMAT_VERSION,
    STAGE_FILES,
    DatasetFile,
    RenderManifest,
    TrainRunFile,
    read_stage_file,
)
from charkit.testing.stagefiles import write_dataset_file, write_render_manifest


def _manifest(tmp_path):
    (tmp_path / "s01.png").write_bytes(b"x")
    write_render_manifest(tmp_path, [{"scene": "s01", "file": "s01.png", "characters": ["alice"]}])
    return tmp_path / "manifest.json"


def test_every_stage_file_has_a_format_version():
    for name, model in STAGE_FILES.items():
        assert model.model_fields["format_version"].default == FORMAT_VERSION, name


def test_a_written_manifest_reads_back_equal(tmp_path):
    path = _manifest(tmp_path)
    m = read_stage_file(path, RenderManifest)
    assert m.format_version == FORMAT_VERSION and m.images[0].scene == "s01"
    assert json.loads(path.read_text())["images"][0]["characters"] == ["alice"]


def test_a_file_without_format_version_is_version_one(tmp_path):
    path = _manifest(tmp_path)
    data = json.loads(path.read_text())
    del data["format_version"]
    path.write_text(json.dumps(data))
    assert read_stage_file(path, RenderManifest).format_version == 1


BAD = [
    ("missing", None, "no such file"),
    ("not json", "{", "not valid JSON"),
    ("a list", "[]", "not a charkit RenderManifest"),
    ("newer format", {"format_version": 99}, "written by a newer charkit (format 99"),
    ("null image", {"images": [None]}, "field 'images.0'"),
    ("wrong type", {"project": 3}, "field 'project'"),
    ("typo", {"projekt": "x"}, "unknown field; did you mean 'project'?"),
    ("image field", {"images": [{"scene": "s01"}]}, "field 'images.0."),
    ("deep nesting", "[" * 100000 + "]" * 100000, "not valid JSON"),
]


@pytest.mark.parametrize("case,change,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_manifests_are_one_line_errors(tmp_path, case, change, expected):
    path = _manifest(tmp_path)
    if change is None:
        path.unlink()
    elif isinstance(change, str):
        path.write_text(change)
    else:
        data = json.loads(path.read_text())
        data.update(change)
        path.write_text(json.dumps(data))
    with pytest.raises(CharkitError) as e:
        read_stage_file(path, RenderManifest, fix="re-render it")
    msg = str(e.value)
    assert expected in msg and str(path) in msg and "\n" not in msg
    assert msg.endswith("; re-render it")


def test_dataset_and_run_files_validate(tmp_path):
    write_dataset_file(
        tmp_path,
        [{"file": "images/a.png", "caption": "ohwx man", "width": 64, "height": 64, "source": "a.jpg"}],
        character="alice",
    )
    ds = read_stage_file(tmp_path / "dataset.json", DatasetFile)
    assert ds.items[0].file == "images/a.png" and ds.backend.name == "dlib"
    (tmp_path / "run.json").write_text(json.dumps({"character": "alice"}))
    with pytest.raises(CharkitError, match="run.json: field '.*': required field is missing"):
        read_stage_file(tmp_path / "run.json", TrainRunFile)

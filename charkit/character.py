"""Characters: ``characters/<name>/character.toml`` plus a ``refs/`` folder of photos.

The TOML parses into :class:`CharacterSpec`, a typed model whose field descriptions are
the help text of ``charkit character`` and of docs/characters.md. Training registers the
LoRA it picks per family under ``[lora]`` so ``charkit render`` finds it; edits go through
tomlkit, so the user's comments and layout stay as they were.

Example ``character.toml``::

    name = "alice"
    trigger = ["ohwx"]
    class_word = "woman"
    description = "Alice, the lead: freckles, short auburn hair"
    refs = "refs"
    negative_prompt = "blurry, deformed, extra fingers"

    [lora]
    sd15 = "loras/sd15/run-1/best.safetensors"
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .configfiles import parse_toml
from .environment import check_output_dir, removed_on_failure
from .errors import CharkitError, validation_message
from .families.registry import FAMILIES
from .images import ImageRejection, list_images, read_image
from .paths import atomic_write_text, check_name, portable_name

SPEC_FILE = "character.toml"


class CharacterSpec(BaseModel):
    """The contents of ``character.toml``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Character name; also the folder name under characters/ (letters, digits, '.', '_', '-')."
    )
    trigger: list[str] = Field(
        default_factory=list,
        description='Trigger words the LoRA is trained on; `{name}` in storyboard prompts expands to them, e.g. ["ohwx"].',
    )
    class_word: str = Field(
        default="person", description='Class noun used in captions after the trigger, e.g. "woman".'
    )
    description: str = Field(
        default="", description="Free text describing the character (for people; not used in prompts)."
    )
    refs: str = Field(default="refs", description="Reference photo folder, relative to the character folder.")
    negative_prompt: str = Field(default="", description="Default negative prompt for scenes with this character.")
    lora: dict[str, str] = Field(
        default_factory=dict,
        description=f"Trained LoRA per model family ({', '.join(FAMILIES)}), paths relative to the character folder; "
        "filled in by `charkit train`.",
    )

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, v: str) -> str:
        try:
            return check_name(v, "name")
        except CharkitError as e:
            raise ValueError(str(e)) from None

    @field_validator("lora")
    @classmethod
    def _known_families(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(v) - set(FAMILIES))
        if bad:
            raise ValueError(f"unknown family {bad[0]!r}: use one of {', '.join(FAMILIES)}")
        return v

    @field_validator("refs")
    @classmethod
    def _refs_inside(cls, v: str) -> str:
        if os.path.isabs(v) or ".." in Path(v).parts:
            raise ValueError("must be a folder inside the character folder (no absolute path, no '..')")
        return v


@dataclass
class Character:
    """A loaded character folder."""

    dir: Path
    spec: CharacterSpec
    _refs: list[Path] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def refs_dir(self) -> Path:
        return self.dir / self.spec.refs

    @property
    def trigger_text(self) -> str:
        """The trigger words joined, or the name when the character has none yet."""
        return " ".join(self.spec.trigger) if self.spec.trigger else self.spec.name

    def ref_paths(self) -> list[Path]:
        """Reference image files (sorted); raises if the folder is missing or empty."""
        if self._refs is None:
            if not self.refs_dir.is_dir():
                raise CharkitError(
                    f"{self.dir / SPEC_FILE}: field 'refs': folder {self.refs_dir} does not exist; create it and add 10-30 photos"
                )
            self._refs = list_images(self.refs_dir)
            if not self._refs:
                raise CharkitError(
                    f"{self.refs_dir}: no reference images; add 10-30 photos of {self.name} (png, jpg, webp)"
                )
        return list(self._refs)

    def lora_path(self, family: str) -> Path | None:
        rel = self.spec.lora.get(family)
        return None if rel is None else (self.dir / rel)


def resolve_character_dir(ref: str | os.PathLike, root: str | os.PathLike = "characters") -> Path:
    """A character folder from a path (``characters/alice``) or a bare name looked up under ``root``."""
    p = Path(ref)
    if p.is_dir() or p.name == SPEC_FILE or os.sep in str(ref) or "/" in str(ref):
        return p.parent if p.name == SPEC_FILE else p
    return Path(root) / str(ref)


def load_character(ref: str | os.PathLike, root: str | os.PathLike = "characters") -> Character:
    """Load ``characters/<name>/character.toml``.

    >>> alice = load_character("characters/alice")  # doctest: +SKIP
    >>> alice.trigger_text  # doctest: +SKIP
    'ohwx'
    """
    d = resolve_character_dir(ref, root)
    f = d / SPEC_FILE
    if not f.is_file():
        raise CharkitError(f"{f}: no character here; create one with `charkit character init NAME --refs DIR`")
    try:
        text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CharkitError(f"{f}: not UTF-8 text; save it as UTF-8") from None
    data = parse_toml(text, str(f))
    try:
        spec = CharacterSpec.model_validate(data)
    except ValidationError as e:
        raise CharkitError(validation_message(str(f), e, known_fields=CharacterSpec.model_fields)) from None
    return Character(dir=d, spec=spec)


def save_spec(character_dir: str | os.PathLike, spec: CharacterSpec) -> Path:
    """Write ``spec`` as character.toml; an existing file keeps its comments, layout and key order (tomlkit)."""
    path = Path(character_dir) / SPEC_FILE
    data = spec.model_dump()
    if not data["lora"]:
        data.pop("lora")
    doc = tomlkit.parse(path.read_text(encoding="utf-8")) if path.is_file() else tomlkit.document()
    for key in [k for k in doc if k not in data]:
        del doc[key]
    for key, value in data.items():
        if key == "lora" and isinstance(doc.get("lora"), dict):
            table = doc["lora"]
            for fam in [f for f in table if f not in value]:
                del table[fam]
            for fam, rel in value.items():
                if table.get(fam) != rel:
                    table[fam] = rel
        elif doc.get(key) != value:
            doc[key] = value
    atomic_write_text(path, tomlkit.dumps(doc))
    return path


def register_lora(character_dir: str | os.PathLike, family: str, path: str | os.PathLike) -> Path:
    """Record a trained LoRA for ``family`` in character.toml (path stored relative to the folder when inside it).

    Only the ``[lora]`` entry changes: comments and the rest of the file stay as the user wrote them.
    """
    character = load_character(character_dir)
    p = Path(path).resolve()
    try:
        rel = p.relative_to(character.dir.resolve()).as_posix()
    except ValueError:
        rel = str(p)
    lora = dict(character.spec.lora)
    lora[family] = rel
    return save_spec(character.dir, character.spec.model_copy(update={"lora": lora}))


@dataclass
class InitResult:
    character: Character
    copied: list[Path]
    rejected: list[ImageRejection]


def init_character(
    name: str,
    refs: str | os.PathLike,
    *,
    root: str | os.PathLike = "characters",
    trigger: list[str] | None = None,
    class_word: str = "person",
    description: str = "",
    negative_prompt: str = "",
    force: bool = False,
) -> InitResult:
    """Create ``<root>/<name>/`` with character.toml and validated copies of the photos in ``refs``.

    Unreadable files are skipped and reported; the folder appears only when at least one photo is usable.
    """
    check_name(name, "character name")
    src = Path(refs)
    if not src.is_dir():
        raise CharkitError(f"--refs {src}: not a folder; point it at a folder of 10-30 photos")
    target = Path(root) / name
    if (target / SPEC_FILE).exists() and not force:
        raise CharkitError(f"{target / SPEC_FILE} already exists; pick another name or pass --force to overwrite")
    check_output_dir(root, "--root")  # before reading photos: a file in the way or a read-only place
    files = list_images(src)
    if not files:
        raise CharkitError(f"--refs {src}: no images found (png, jpg, webp, ...)")
    usable: list[Path] = []
    rejected: list[ImageRejection] = []
    for f in files:
        r = read_image(f)
        (rejected.append(r) if isinstance(r, ImageRejection) else usable.append(f))
    if not usable:
        raise CharkitError(f"--refs {src}: none of the {len(files)} images could be read ({rejected[0].reason})")
    spec = CharacterSpec(
        name=name,
        trigger=trigger or [],
        class_word=class_word,
        description=description,
        negative_prompt=negative_prompt,
    )
    # Build in a temporary sibling, then move into place: a half-copied character never looks complete.
    tmp = Path(root) / f".{name}.init"
    with removed_on_failure(root):  # a full disk, Ctrl-C: no staging folder (nor a new, empty root) is left
        Path(root).mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            copied = _copy_refs(usable, tmp / spec.refs, target / spec.refs)
            save_spec(tmp, spec)
            _swap_in(tmp, target, Path(root) / f".{name}.old")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return InitResult(character=load_character(target), copied=copied, rejected=rejected)


def _copy_refs(files: list[Path], dest: Path, final: Path) -> list[Path]:
    """Copy photos (and their caption .txt) into ``dest``; names that are not valid UTF-8 get a portable one."""
    dest.mkdir(parents=True)
    copied = []
    used_names: set[str] = set()
    for f in files:
        own = portable_name(f.name)
        dest_name = own if own not in used_names else f"{Path(own).stem}_{len(used_names)}{Path(own).suffix}"
        used_names.add(dest_name)
        shutil.copy2(f, dest / dest_name)
        caption = f.with_suffix(".txt")
        if caption.is_file():
            shutil.copy2(caption, dest / (Path(dest_name).stem + ".txt"))
        copied.append(final / dest_name)
    return copied


def _swap_in(tmp: Path, target: Path, old: Path) -> None:
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)

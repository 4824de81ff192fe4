"""Fixtures for the insightface code path: a fake-but-real-format pack, a backend over it,
marker "characters", and a network guard (insightface downloads packs it cannot find)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from charkit.testing.fake_insightface import draw_marker_image, write_fake_pack


class NetworkAttempt(RuntimeError):
    """Raised by the guard when code under test tries to reach the network."""


def marker_character(root: Path, name: str, pattern: int) -> Path:
    """characters/<name>/ whose three references show marker ``pattern`` at different sizes and places."""
    from charkit.character import CharacterSpec, save_spec

    d = root / name
    (d / "refs").mkdir(parents=True, exist_ok=True)
    shots = [(400, (200, 200, 120)), ((640, 480), (260, 300, 90)), ((500, 700), (300, 250, 160))]
    for i, (size, (cx, cy, side)) in enumerate(shots):
        draw_marker_image(size, [(cx, cy, side, pattern)]).save(d / "refs" / f"{name}-{i}.png")
    save_spec(d, CharacterSpec(name=name, trigger=["ohwx"], class_word="person"))
    return d


@pytest.fixture(scope="session")
def fake_face_pack(tmp_path_factory) -> Path:
    """A fake insightface pack (SCRFD + ArcFace signatures) at ``<root>/models/fakepack``."""
    root = tmp_path_factory.mktemp("insightface-root")
    return write_fake_pack(root / "models", name="fakepack")


@pytest.fixture(scope="session")
def fake_face_backend(fake_face_pack):
    """An :class:`InsightFaceBackend` running the fake pack in insightface's real classes."""
    from charkit.identity.insightface_backend import InsightFaceBackend

    return InsightFaceBackend(fake_face_pack, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def marker_characters(tmp_path_factory) -> Path:
    """characters/alice (marker pattern 0) and characters/bob (pattern 3)."""
    root = tmp_path_factory.mktemp("marker-characters")
    marker_character(root, "alice", 0)
    marker_character(root, "bob", 3)
    return root


@pytest.fixture
def network_blocked(monkeypatch):
    """Every DNS lookup or connection raises :class:`NetworkAttempt`; the returned list records them."""
    attempts: list[str] = []

    def refuse(what):
        def _raise(*args, **kwargs):
            attempts.append(what)
            raise NetworkAttempt(f"network access attempted: {what}")

        return _raise

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    return attempts


@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> Path:
    """HOME without ``~/.insightface`` and no CHARKIT_FACE_MODELS: the default location is empty."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CHARKIT_FACE_MODELS", raising=False)
    return home

"""Reading the YAML and TOML files users write (storyboards, character.toml, training presets).

``yaml.safe_load`` and ``tomllib`` accept two things that hurt later: a key written twice (YAML keeps
the last one silently) and nesting deep enough to end in a ``RecursionError`` traceback. Here both
are one-line :class:`~charkit.errors.CharkitError` s naming the file and the line.

>>> parse_yaml("a: 1\\nb: [1, 2]\\n", "x.yaml")
{'a': 1, 'b': [1, 2]}
>>> parse_yaml("steps: 30\\nsteps: 4\\n", "x.yaml")
Traceback (most recent call last):
...
charkit.errors.CharkitError: x.yaml: line 2: key 'steps' is written twice (first on line 1); keep one of them
"""

from __future__ import annotations

from typing import Any

import tomllib
import yaml

from .errors import CharkitError

__all__ = ["MAX_DEPTH", "parse_toml", "parse_yaml"]

#: deepest nesting of lists / mappings a charkit file may have (real ones stay under 6)
MAX_DEPTH = 64

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _TooDeep(Exception):
    def __init__(self, mark):
        self.mark = mark


class _Duplicate(Exception):
    def __init__(self, key, mark, first):
        self.key, self.mark, self.first = key, mark, first


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys and nesting deeper than MAX_DEPTH."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # `<<: *defaults` may be overridden by keys of its own mapping
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the constructor reports it
                    continue
                if first is not key_node.start_mark:
                    raise _Duplicate(key, key_node.start_mark, first)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML like ``yaml.safe_load``, refusing duplicate keys and deep nesting; errors name ``source``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except _Duplicate as e:
        raise CharkitError(
            f"{source}: line {e.mark.line + 1}: key {e.key!r} is written twice (first on line {e.first.line + 1}); "
            "keep one of them"
        ) from None
    except (_TooDeep, RecursionError) as e:
        where = f"line {e.mark.line + 1}: " if isinstance(e, _TooDeep) else ""
        raise CharkitError(
            f"{source}: {where}nested more than {MAX_DEPTH} levels deep; a charkit file needs only a few levels"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise CharkitError(f"{source}: invalid YAML{where} ({problem}); fix the syntax") from None


def _depth(value: Any, level: int = 0) -> int:
    stack, deepest = [(value, level)], level
    while stack:  # iterative: the point is to never recurse deeply
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def parse_toml(text: str, source: str) -> dict:
    """Parse TOML with ``tomllib``; syntax errors, duplicate keys and deep nesting are one line naming ``source``.

    >>> parse_toml('name = "alice"', "character.toml")
    {'name': 'alice'}
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CharkitError(f"{source}: not valid TOML ({' '.join(str(e).split())}); fix the syntax") from None
    except RecursionError:
        data = None
    if data is None or _depth(data) > MAX_DEPTH:
        raise CharkitError(
            f"{source}: nested more than {MAX_DEPTH} levels deep; a charkit file needs only a few levels"
        ) from None
    return data

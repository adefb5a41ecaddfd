"""Run settings: dataclasses filled from YAML files and the command line through one converter and validator.

Every job of the package (WSI jobs, MIL training, VQA training, pretraining stages, the benchmark) keeps its
settings in a dataclass. :func:`build` makes one from a mapping of values: the types come from the field
annotations, strings (from the command line) are converted, YAML values are checked, and a wrong type or an
unknown key raises :class:`SettingsError` naming the key and where it came from (a file, ``--set``, ...).

Types understood: ``str``, ``int``, ``float``, ``bool``, ``X | None``, ``list[X]``, ``tuple[X, ...]`` and
``Sequence[X]`` (a string is split on commas), ``dict[...]`` (a string is read as a YAML mapping), and
``Literal[...]`` (one of the listed values).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

from .messages import listing

__all__ = ["SettingsError", "build", "convert", "load_yaml", "parse_overrides", "pick", "setting_names"]

_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "1", "yes", "on")
_FALSE_WORDS = ("false", "0", "no", "off")
_SEQUENCES = (list, tuple, collections.abc.Sequence)


class SettingsError(ValueError):
    """A setting that does not fit its dataclass: unknown, of the wrong type, or a file that is not YAML."""


def setting_names(cls: type) -> list[str]:
    """The settings a dataclass takes (its init fields), in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def load_yaml(path: str | os.PathLike) -> dict:
    """A YAML file that holds a mapping (an empty file is ``{}``); errors name the file (and the line)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"settings file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SettingsError(f"{path} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{path} is not a text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a mapping of setting names to values, not a {type(data).__name__}")
    return data


def parse_overrides(items: Sequence[str], source: str = "--set") -> dict[str, str]:
    """``["lr=1e-3", "steps=20"]`` -> ``{"lr": "1e-3", "steps": "20"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{source} {item!r} is not key=value")
        out[key.strip()] = value
    return out


def build(cls: type, values: Mapping[str, typing.Any], source: str = "settings"):
    """An instance of the dataclass ``cls`` from ``values`` (converted and checked; see the module docstring).

    Unknown keys and values of the wrong type raise :class:`SettingsError` naming the key and ``source``;
    the dataclass's own ``__post_init__`` checks run afterwards.
    """
    names = setting_names(cls)
    unknown = [key for key in values if key not in names]
    if unknown:
        hints = [f"{key!r} (did you mean {close[0]!r}?)" for key in unknown
                 if (close := difflib.get_close_matches(key, names, n=1))]  # fmt: skip
        hint = f"; {', '.join(hints)}" if hints else ""
        raise SettingsError(f"{source}: unknown setting(s) {listing(unknown)}{hint}; known: {listing(names, 100)}")
    annotations = typing.get_type_hints(cls)
    converted = {key: convert(value, annotations[key], f"{source}: {key}") for key, value in values.items()}
    return cls(**converted)


def pick(cls: type, source_settings, **overrides):
    """An instance of ``cls`` from the same-named fields of another settings object, plus ``overrides``."""
    values = {name: getattr(source_settings, name) for name in setting_names(cls) if hasattr(source_settings, name)}
    return build(cls, {**values, **overrides}, source=type(source_settings).__name__)


def convert(value, annotation, where: str = "value"):
    """``value`` as the type ``annotation`` says; :class:`SettingsError` naming ``where`` when it is not one."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, args, where)
    if origin is typing.Literal:
        if value not in args:
            raise SettingsError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in _SEQUENCES:
        return _convert_sequence(value, origin, args, where)
    if origin is dict or annotation is dict:
        return _convert_mapping(value, where)
    if annotation is bool:
        return _convert_bool(value, where)
    if annotation in (int, float, str):
        return _convert_scalar(value, annotation, where)
    return value  # a type this module does not check (a path object, a callable, ...)


def _convert_union(value, args: tuple, where: str):
    optional = type(None) in args
    members = [a for a in args if a is not type(None)]
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
        if optional:
            return None
        raise SettingsError(f"{where} must be set (it cannot be none)")
    errors = []
    for member in members:
        try:
            return convert(value, member, where)
        except SettingsError as e:
            errors.append(str(e))
    raise SettingsError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {members}")


def _convert_sequence(value, origin, args: tuple, where: str):
    item_type = args[0] if args else typing.Any
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    elif not isinstance(value, (list, tuple)):
        raise SettingsError(f"{where} must be a list, got {type(value).__name__} {value!r}")
    items = [convert(item, item_type, f"{where}[{i}]") for i, item in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _convert_mapping(value, where: str) -> dict:
    if isinstance(value, str):
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            value = None
        if not isinstance(value, dict):
            raise SettingsError(f"{where} must be a YAML mapping such as {{depth: 6}}")
    if not isinstance(value, dict):
        raise SettingsError(f"{where} must be a mapping, got {type(value).__name__} {value!r}")
    return value


def _convert_bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in (*_TRUE_WORDS, *_FALSE_WORDS):
        return value.strip().lower() in _TRUE_WORDS
    raise SettingsError(f"{where} must be true or false, got {value!r}")


def _convert_scalar(value, kind: type, where: str):
    if isinstance(value, bool) and kind is not str:  # YAML's yes/no must not pass as 1/0
        raise SettingsError(f"{where} must be {kind.__name__}, got the boolean {value}")
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise SettingsError(f"{where} must be text, got {type(value).__name__} {value!r}")
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            raise SettingsError(f"{where} must be {_article(kind)}, got {value!r}") from None
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    if kind is int and isinstance(value, int):
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    raise SettingsError(f"{where} must be {_article(kind)}, got {type(value).__name__} {value!r}")


def _article(kind: type) -> str:
    return {int: "an integer", float: "a number"}.get(kind, kind.__name__)

"""The shared config base: dataclasses that validate eagerly, round-trip through YAML/JSON, and
reject unknown keys with the closest valid name.

Why eager: a typo in a recipe should cost seconds, not an hour of training followed by a crash in
stage 5. Every config class checks itself in ``__post_init__``; ``from_dict`` checks key names and
types before the object even exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar, get_args, get_origin

import yaml

from .errors import ConfigError

T = TypeVar("T", bound="Config")


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or a list of valid choices."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; valid keys: {', '.join(sorted(choices))}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _describe(tp: Any) -> str:
    """A type as a user reads it in an error ("true or false", "'auto'", "int")."""
    if tp is bool:
        return "true or false"
    if get_origin(tp) is typing.Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    return _type_name(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``where``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{where}: expected {' or '.join(_describe(a) for a in args if a is not type(None))}, "
                          f"got {value!r}")
    if origin is typing.Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (list, tuple, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        k_tp, v_tp = get_args(tp) or (Any, Any)
        return {_coerce(k, k_tp, where): _coerce(v, v_tp, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return tp.from_dict(value, where=where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


@dataclasses.dataclass
class Config:
    """Base for every kronbit config. Subclasses are dataclasses and override ``validate``."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # pragma: no cover - default: nothing to check
        """Raise ConfigError with an actionable one-line message when a value is unusable."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any], where: str | None = None) -> T:
        where = where or cls.__name__
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        names = list(fields)
        kwargs = {}
        for key, value in data.items():
            if key not in names:
                raise ConfigError(f"{where}: unknown key '{key}'{did_you_mean(str(key), names)}")
            kwargs[key] = _coerce(_onto_section_default(fields[key], value), hints[key], f"{where}.{key}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in kwargs and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{where}: missing required key(s): {', '.join(missing)}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_yaml(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
        data = load_yaml(path)
        return cls.from_dict(apply_overrides(data, overrides), where=Path(path).name)

    def replace(self: T, **changes: Any) -> T:
        """A validated copy with some fields changed."""
        data = self.to_dict()
        data.update(changes)
        return type(self).from_dict(data)


def _onto_section_default(f: dataclasses.Field, value: Any) -> Any:
    """A nested config section given as a mapping keeps the section's own defaults for the keys
    it leaves out (``teacher: {learning_rate: 1e-4}`` keeps the teacher's 3 epochs), so the
    defaults a run uses are the ones validation saw."""
    if f.default_factory is dataclasses.MISSING or not isinstance(value, Mapping):
        return value
    default = f.default_factory()
    if not isinstance(default, Config):
        return value
    return {**default.to_dict(), **value}


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{loc}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` / ``a.b.c=value`` overrides; values are parsed as YAML scalars/lists.

    List items are addressed by index (``stages.2.epochs=1``). Key names are checked later by
    ``from_dict``, which suggests the closest name.
    """
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override '{key}': '{part}' is not an index of a {len(node)}-item list")
                node[int(part)] = dict(node[int(part)])
                node = node[int(part)]
            else:
                child = node.get(part)
                if isinstance(child, list):
                    node[part] = [dict(c) if isinstance(c, dict) else c for c in child]
                elif isinstance(child, dict):
                    node[part] = dict(child)
                else:
                    node[part] = {}
                node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override '{key}': '{last}' is not an index of a {len(node)}-item list")
            node[int(last)] = value
        else:
            node[last] = value
    return data

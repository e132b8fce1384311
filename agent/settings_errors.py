"""Configuration problems phrased for the person who wrote the configuration.

pydantic reports ``('mqtt', 'port')`` and "Input should be less than or equal to 65535";
someone editing a YAML file on a gateway needs the dotted key, the form the value must
take, the value they gave and the line (or environment variable) it came from. The
expected form is derived from the model's own annotations and bounds, so a type error and
a bound error on one key read the same, and the text can never disagree with the model.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

Loc = tuple[str | int, ...]
SourceOf = Callable[[Loc], str]

_SECRET_KEYS = ("password",)
_MAX_SHOWN = 80


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the configuration, with everything needed to fix it."""

    path: str  # dotted key path such as ``mqtt.port``; "" for whole-file problems
    expected: str  # the form the value must take, or (is_form=False) what is wrong
    given: str  # the value given, rendered; "" when there is none
    source: str  # ``config.yaml line 7``, ``environment variable FAULTLINE__MQTT__PORT``
    is_form: bool = True

    def __str__(self) -> str:
        if not self.path:  # the whole file is unusable (syntax, not found)
            return f"{self.source}: {self.expected}" if self.source else self.expected
        if self.is_form:
            head = f"{self.path}: expected {self.expected}"
            head += f", got {self.given}" if self.given else ""
            where = self.source
        else:
            head = f"{self.path}: {self.expected}"
            given = f"value {self.given}" if self.given else ""
            where = "; ".join(x for x in (given, self.source) if x)
        return f"{head} ({where})" if where else head


class ConfigError(Exception):
    """The configuration is unusable; the message lists every problem, one per line."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(f"  - {p}" for p in self.problems))


class KeyedValueError(ValueError):
    """A cross-field check that blames one specific key rather than its whole section.

    pydantic places a model validator's error on the section (``mqtt``); the formatter
    appends ``key`` so the message and the YAML line point at the value to change.
    """

    def __init__(self, key: Loc, expected: str, value: Any) -> None:
        super().__init__(expected)
        self.key = key
        self.value = value


def dotted(loc: Iterable[str | int]) -> str:
    """``('topics', 'window_filters', 0)`` -> ``topics.window_filters[0]``."""
    out = ""
    for seg in loc:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out


def show(value: Any, loc: Loc = ()) -> str:
    """Render a given value briefly, YAML-flavoured, never revealing a secret."""
    secret_key = bool(loc) and str(loc[-1]).endswith(_SECRET_KEYS)
    if isinstance(value, SecretStr) or (secret_key and value):
        return "'***'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def unwrap_optional(ann: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(ann, False)``; drops Annotated."""
    if get_origin(ann) is Annotated:
        ann = get_args(ann)[0]
    if get_origin(ann) in (Union, types.UnionType):
        args = get_args(ann)
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], len(rest) != len(args)
    return ann, False


def _as_model(ann: Any) -> type[BaseModel] | None:
    base, _ = unwrap_optional(ann)
    return base if isinstance(base, type) and issubclass(base, BaseModel) else None


def field_at(model: type[BaseModel], loc: Loc) -> tuple[FieldInfo | None, Any]:
    """Field and annotation at ``loc`` through sub-models, dicts and lists; None if unknown."""
    ann: Any = model
    info: FieldInfo | None = None
    for seg in loc:
        sub = _as_model(ann)
        base, _ = unwrap_optional(ann)
        if sub is not None:
            info = sub.model_fields.get(str(seg))
            if info is None:
                return None, None
            ann = info.annotation
        elif get_origin(base) in (dict, list):
            ann, info = get_args(base)[-1], None
        else:
            return None, None
    return info, ann


def _num(value: Any) -> str:
    whole = isinstance(value, int | float) and float(value).is_integer()
    return str(int(value)) if whole else str(value)


def _bounds(info: FieldInfo | None, base: Any) -> str:
    found: dict[str, Any] = {}
    for meta in info.metadata if info else ():
        for name in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            if getattr(meta, name, None) is not None:
                found[name] = getattr(meta, name)
    if "ge" in found and "le" in found:
        return f"between {_num(found['ge'])} and {_num(found['le'])}"
    words = {"ge": "at least", "gt": "greater than", "le": "at most", "lt": "less than"}
    parts = [f"{words[k]} {_num(v)}" for k, v in found.items() if k in words]
    if "max_length" in found and get_origin(base) in (list, dict):
        parts.append(f"with at most {found['max_length']} items")
    elif "max_length" in found:
        parts.append(f"of {found.get('min_length', 0)} to {found['max_length']} characters")
    return " and ".join(parts)


def _type_words(ann: Any) -> str:
    base, _ = unwrap_optional(ann)
    origin = get_origin(base)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(base))
    if origin is list:
        return "a list of " + _type_words(get_args(base)[0]).removeprefix("a ") + "s"
    sub = _as_model(get_args(base)[1] if origin is dict else base)
    keys = "{" + ", ".join(sub.model_fields) + "}" if sub else ""
    if origin is dict:
        return f"a mapping from id to {keys or 'value'}"
    if sub is not None:
        return f"a mapping with keys {keys}"
    words = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        SecretStr: "a string",
        Path: "a path",
    }
    return words.get(base, str(base))


def describe(info: FieldInfo | None, ann: Any) -> str:
    """The expected form of a value, e.g. ``an integer between 1 and 65535``."""
    base, nullable = unwrap_optional(ann)
    words = _type_words(base)
    bounds = _bounds(info, base)
    return f"{words}{' ' + bounds if bounds else ''}{' or null' if nullable else ''}"


def problems_from(
    model: type[BaseModel], exc: ValidationError, source_of: SourceOf
) -> list[ConfigProblem]:
    """Translate every pydantic error into a ConfigProblem (duplicates folded)."""
    out: list[ConfigProblem] = []
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        value = err.get("input")
        error = (err.get("ctx") or {}).get("error")
        given = show(value, loc)
        is_form = True
        if "[key]" in loc:
            loc = loc[: loc.index("[key]")]
            expected = "an id of 1 to 128 letters, digits, '_', '.' or '-'"
        elif err["type"] == "extra_forbidden":
            parent = _as_model(field_at(model, loc[:-1])[1])
            allowed = ", ".join(parent.model_fields) if parent else "none"
            expected, is_form = f"unknown key; allowed keys here: {allowed}", False
        elif isinstance(error, KeyedValueError):
            loc = loc + error.key
            expected, given = str(error), show(error.value, loc)
        elif isinstance(error, ValueError | AssertionError):
            expected = str(error)
        else:
            info, ann = field_at(model, loc)
            expected = describe(info, ann) if ann is not None else err["msg"]
            if err["type"] == "missing":
                expected, given = f"{expected} (this key is required)", "nothing"
        problem = ConfigProblem(dotted(loc), expected, given, source_of(loc), is_form)
        if problem not in out:
            out.append(problem)
    return out

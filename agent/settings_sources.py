"""Where each configuration value came from: layered YAML files and environment variables.

Layers merge in precedence order (packaged ``default.yaml`` < user file < environment).
Alongside the merged data we keep, per key path, the place that last set it, so an error
can say ``config.yaml line 7`` or ``environment variable FAULTLINE__MQTT__PORT``: the
person fixing a gateway needs to know which of three places to edit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from faultline.agent.settings_errors import (
    ConfigError,
    ConfigProblem,
    Loc,
    field_at,
    problems_from,
    show,
    unwrap_optional,
)

CONFIG_ENV = "FAULTLINE_CONFIG"
ENV_PREFIX = "FAULTLINE__"
ENV_SEPARATOR = "__"
KeyPath = tuple[str, ...]
Where = Callable[[KeyPath], str | None]
M = TypeVar("M", bound=BaseModel)


@dataclass(slots=True)
class YamlDoc:
    """A parsed YAML mapping plus the line of every key and list item in it."""

    data: dict[Any, Any]
    lines: dict[KeyPath, int]
    label: str
    problems: list[ConfigProblem] = field(default_factory=list)

    def where(self, path: KeyPath) -> str | None:
        line = self.lines.get(path)
        return None if line is None else f"{self.label} line {line}"


def _walk(node: yaml.Node, prefix: KeyPath, doc: YamlDoc) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            line = key_node.start_mark.line + 1
            path = (*prefix, key)
            if key in seen and key != "<<":
                doc.problems.append(
                    ConfigProblem(
                        ".".join(path),
                        f"duplicate key (first on line {seen[key]}; YAML keeps only the last)",
                        "",
                        f"{doc.label} line {line}",
                        is_form=False,
                    )
                )
            seen[key] = line
            doc.lines[path] = line
            _walk(value_node, path, doc)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = (*prefix, str(index))
            doc.lines[path] = item.start_mark.line + 1
            _walk(item, path, doc)


def parse_yaml(text: str, label: str) -> YamlDoc:
    """Parse one YAML document recording key lines; raise ConfigError with file and line."""
    doc = YamlDoc({}, {}, label)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _walk(node, (), doc)  # before constructing: merge keys rewrite the node tree
            data = loader.construct_document(node)
            if not isinstance(data, dict):
                raise ConfigError(
                    [
                        ConfigProblem(
                            "",
                            f"the top level must be a mapping of sections, got {show(data)}",
                            "",
                            f"{label} line {node.start_mark.line + 1}",
                            is_form=False,
                        )
                    ]
                )
            doc.data = data
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{label} line {mark.line + 1}" if mark else label
        reason = exc.problem or exc.context or "syntax error"
        if exc.context and exc.context_mark and exc.problem and exc.context_mark is not mark:
            reason += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        problem = ConfigProblem("", f"invalid YAML: {reason}", "", where, is_form=False)
        raise ConfigError([problem]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem("", f"invalid YAML: {exc}", "", label, False)]) from None
    finally:
        loader.dispose()
    return doc


def read_yaml_file(path: Path) -> YamlDoc:
    """Read and parse a user's YAML file; unreadable files are a ConfigError too."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        reason = "config file not found"
    except IsADirectoryError:
        reason = "is a directory, not a config file"
    except (OSError, UnicodeDecodeError) as exc:
        reason = f"cannot read config file: {exc}"
    else:
        return parse_yaml(text, str(path))
    raise ConfigError([ConfigProblem("", reason, "", str(path), is_form=False)])


def _match_key(dst: Mapping[Any, Any], key: Any) -> Any:
    """Existing key equal to ``key`` ignoring case (env names are case-insensitive)."""
    if key in dst:
        return key
    folded = str(key).lower()
    return next((k for k in dst if str(k).lower() == folded), key)


@dataclass(slots=True)
class Layers:
    """Merged configuration data and, per key path, the place that set it last."""

    data: dict[Any, Any] = field(default_factory=dict)
    sources: dict[KeyPath, str] = field(default_factory=dict)

    def merge(self, src: Mapping[Any, Any], where: Where, fold_case: bool) -> None:
        self._merge(self.data, src, (), where, fold_case)

    def _merge(
        self,
        dst: dict[Any, Any],
        src: Mapping[Any, Any],
        prefix: KeyPath,
        where: Where,
        fold_case: bool,
    ) -> None:
        for key, value in src.items():
            k = _match_key(dst, key) if fold_case else key
            path = (*prefix, str(k))
            if isinstance(value, dict) and isinstance(dst.get(k), dict):
                if path not in self.sources:
                    self._record(path, where(path))
                self._merge(dst[k], value, path, where, fold_case)
                continue
            dst[k] = value  # scalars and lists replace: a shorter list must not keep old items
            for old in [p for p in self.sources if p[: len(path)] == path]:
                del self.sources[old]
            self._record_tree(path, value, where)

    def _record(self, path: KeyPath, label: str | None) -> None:
        if label is not None:
            self.sources[path] = label

    def _record_tree(self, path: KeyPath, value: Any, where: Where) -> None:
        self._record(path, where(path))
        if isinstance(value, dict | list):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                self._record_tree((*path, str(k)), v, where)

    def source_of(self, loc: Loc) -> str:
        """Label of the deepest recorded ancestor of ``loc`` (the key itself if possible)."""
        path = tuple(str(seg) for seg in loc)
        for n in range(len(path), 0, -1):
            if path[:n] in self.sources:
                return self.sources[path[:n]]
        return "built-in default"


def _constant(label: str) -> Where:
    return lambda _path: label


def _env_value(raw: str, model: type[BaseModel], loc: Loc) -> Any:
    """Parse an env value as YAML, except text (``0123`` must stay a password, not 83).

    A text list given without brackets is one item, so ``{prefix}/a/+/b`` needs no quoting.
    Raises yaml.YAMLError only for values that look like YAML collections.
    """
    _, ann = field_at(model, loc)
    base, nullable = unwrap_optional(ann)
    text = (str, SecretStr, Path)
    if base in text or (
        get_origin(base) is list
        and not raw.lstrip().startswith("[")
        and unwrap_optional(get_args(base)[0])[0] in text
    ):
        return None if raw == "" and nullable else raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        if raw.lstrip()[:1] in ("[", "{"):
            raise
        return raw  # validation will say what form was expected


def apply_env(
    layers: Layers, env: Mapping[str, str], model: type[BaseModel]
) -> tuple[int, list[ConfigProblem]]:
    """Apply ``FAULTLINE__SECTION__KEY`` variables; returns (count applied, problems)."""
    found: list[tuple[KeyPath, str, str]] = []
    problems: list[ConfigProblem] = []
    for name, raw in env.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = tuple(seg.lower() for seg in name[len(ENV_PREFIX) :].split(ENV_SEPARATOR))
        if not all(path):
            problems.append(
                ConfigProblem(
                    "",
                    "bad variable name: use FAULTLINE__SECTION__KEY with single '__' "
                    "between non-empty parts",
                    "",
                    f"environment variable {name}",
                    is_form=False,
                )
            )
            continue
        found.append((path, name, raw))
    # Shorter paths first, so FAULTLINE__ASSETS__P1__RPM refines FAULTLINE__ASSETS.
    for path, name, raw in sorted(found, key=lambda item: (len(item[0]), item[1])):
        label = f"environment variable {name}"
        try:
            nested: Any = _env_value(raw, model, path)
        except yaml.YAMLError as exc:
            reason = getattr(exc, "problem", None) or str(exc)
            problems.append(
                ConfigProblem(
                    ".".join(path), f"invalid YAML value: {reason}", show(raw), label, is_form=False
                )
            )
            continue
        for seg in reversed(path):
            nested = {seg: nested}
        layers.merge(nested, _constant(label), fold_case=True)
    return len(found), problems


def load_layered(
    model: type[M], default_text: str, path: str | Path | None, env: Mapping[str, str]
) -> tuple[M, int]:
    """Merge defaults < ``path`` (or $FAULTLINE_CONFIG) < env, validate; (model, env count)."""
    layers = Layers()
    chosen = path if path is not None else (env.get(CONFIG_ENV) or None)
    docs = [parse_yaml(default_text, "default.yaml")]
    if chosen is not None:
        docs.append(read_yaml_file(Path(chosen)))
    problems: list[ConfigProblem] = []
    for doc in docs:
        problems += doc.problems
        layers.merge(doc.data, doc.where, fold_case=False)
    n_env, env_problems = apply_env(layers, env, model)
    problems += env_problems
    try:
        settings = model.model_validate(layers.data)
    except ValidationError as exc:
        raise ConfigError(problems + problems_from(model, exc, layers.source_of)) from None
    if problems:
        raise ConfigError(problems)
    return settings, n_env

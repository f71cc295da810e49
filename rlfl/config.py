"""Config dataclasses to command-line flags and config files, with unknown keys rejected.

Every stage describes its settings as dataclasses whose fields carry ``metadata={"help": ...}``.
This module turns them into argparse flags (``n_layer`` -> ``--n-layer``), reads a YAML or JSON
config file, and merges the three layers: dataclass defaults < config file < flags. Nested dataclass
fields are flattened, so a config file is one flat mapping of field names (a section per nested
dataclass is accepted too, e.g. ``train: {lr: 1e-3}``).

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Demo:
    ...     lr: float = field(default=1e-3, metadata={"help": "learning rate"})
    >>> parser = argparse.ArgumentParser()
    >>> add_arguments(parser, Demo)
    >>> build(Demo, {}, vars(parser.parse_args(["--lr", "0.01"]))).lr
    0.01
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Union

__all__ = ["add_arguments", "build", "load_config_file", "field_names", "to_dict", "is_int", "is_number"]


def is_int(x: object) -> bool:
    """An int that is not a bool (bool is an int subclass, and True is no size or count)."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: object) -> bool:
    """An int or float that is not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, is_optional) for ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _walk(cls: type, exclude: frozenset[str] = frozenset(), base: Any = None):
    """Yield (name, field, type, default) of every leaf field, flattening nested dataclasses.

    A nested dataclass field's own default (e.g. ``train: TrainConfig = field(default_factory=lambda:
    TrainConfig(lr=3e-4))``) supplies the defaults of its leaves, so each stage can pick its own.
    """
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        tp = hints[f.name]
        default = getattr(base, f.name) if base is not None else _default(f)
        if dataclasses.is_dataclass(tp):
            yield from _walk(tp, exclude, default)
        else:
            yield f.name, f, tp, default


def field_names(cls: type, exclude: frozenset[str] = frozenset()) -> list[str]:
    """All flat (leaf) field names of a config dataclass, nested dataclasses included."""
    return [name for name, _, _, _ in _walk(cls, exclude)]


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _scalar_parser(tp: Any):
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    return str


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: frozenset[str] = frozenset()) -> None:
    """Add one ``--flag`` per leaf field of ``cls`` to ``parser``, help text from field metadata.

    Flags default to ``argparse.SUPPRESS`` so that the parsed namespace holds only what the user typed;
    ``build`` then layers those over the config file and the dataclass defaults.
    """
    for name, f, tp, default in _walk(cls, exclude):
        inner, optional = _unwrap_optional(tp)
        help_text = f.metadata.get("help")
        if not help_text:
            raise AssertionError(f"{cls.__name__}.{name} has no help metadata")  # a developer error
        help_text = f"{help_text} (default: {default})"
        flag = "--" + name.replace("_", "-")
        origin = typing.get_origin(inner)
        if inner is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        elif origin in (list, tuple):
            item = typing.get_args(inner)[0] if typing.get_args(inner) else str
            parser.add_argument(flag, dest=name, nargs="*", type=_scalar_parser(item),
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=_scalar_parser(inner), default=argparse.SUPPRESS,
                                help=help_text, metavar=name.upper())


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or JSON config file into a flat dict; sections are merged in."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file not found; pass an existing .yaml/.yml/.json file to --config")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: byte {exc.start} is not UTF-8; a config file is YAML or JSON text, save it as "
                         "UTF-8") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"{p}: unsupported config format {p.suffix!r}; use .yaml, .yml or .json")
    except (json.JSONDecodeError, ImportError) as exc:
        raise ValueError(f"{p}: cannot parse config ({exc}); fix the syntax") from exc
    except Exception as exc:  # yaml.YAMLError and friends
        if isinstance(exc, ValueError):
            raise
        raise ValueError(f"{p}: cannot parse config ({str(exc).splitlines()[0]}); fix the syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: a config file must be a mapping of field names to values")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # a section such as `train: {lr: ...}`
            flat.update(value)
        else:
            flat[key] = value
    flat["__source__"] = str(p)
    return flat


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{source}: field '{key}' may not be null")
    origin = typing.get_origin(inner)
    try:
        if inner is bool:
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if inner is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if inner is float:
            return float(value)
        if inner is str:
            return str(value)
        if origin in (list, tuple):
            items = value if isinstance(value, (list, tuple)) else [value]
            item_tp = typing.get_args(inner)[0] if typing.get_args(inner) else str
            out = [_coerce(v, item_tp, key, source) for v in items]
            return tuple(out) if origin is tuple else out
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise ValueError(f"{source}: field '{key}' expects {getattr(inner, '__name__', inner)}, got {value!r}") from None
    return value


def build(cls: type, file_values: dict[str, Any], flag_values: dict[str, Any], *,
          exclude: frozenset[str] = frozenset(), extra_known: frozenset[str] = frozenset()) -> Any:
    """Build ``cls`` from dataclass defaults < ``file_values`` < ``flag_values``.

    A key that is no field of ``cls`` (nor in ``extra_known``, the keys other config classes of the same
    command own) is rejected with the closest known name.
    """
    source = file_values.get("__source__", "config")
    known = set(field_names(cls, exclude)) | set(extra_known)
    for key in list(file_values) + list(flag_values):
        if key == "__source__" or key in known:
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"
        where = source if key in file_values else "flags"
        raise ValueError(f"{where}: unknown config key '{key}'{hint}")
    merged = {k: v for k, v in file_values.items() if k != "__source__"}
    merged.update(flag_values)
    return _build(cls, merged, source, exclude)


def _build(cls: type, values: dict[str, Any], source: str, exclude: frozenset[str], base: Any = None) -> Any:
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            nested_base = getattr(base, f.name) if base is not None else _default(f)
            kwargs[f.name] = _build(tp, values, source, exclude, nested_base)
        elif f.name in values:
            kwargs[f.name] = _coerce(values[f.name], tp, f.name, source)
    # start from the stage's own defaults for a nested config, then apply what was given
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass."""
    out = dataclasses.asdict(obj)
    return json.loads(json.dumps(out, default=str))

"""A run's hyperparameters as data: `--param KEY=VALUE` and `params = [...]` files (YAML, JSON, TOML), each file
hashed and parsed key by key (nested keys joined with dots), so that `diff` names the key that moved."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from envlock.errors import ParamsError, UsageError
from envlock.fsutil import read_small_text, sha256_file, unreadable
from envlock.run.schema import ParamsRecord

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-\[\]]*")
SUFFIXES = (".yaml", ".yml", ".json", ".toml")


def parse_given(items: Sequence[str]) -> dict[str, str]:
    """`--param KEY=VALUE` items as a mapping (the last one given wins); a UsageError for one without a key."""
    given: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not _KEY.fullmatch(key):
            raise UsageError(
                f"--param {item!r} is not KEY=VALUE",
                hint="a key is letters, digits, _ . - (e.g. --param optimizer.lr=0.001)",
            )
        given[key] = value
    return given


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Nested tables and lists as dotted keys (`optimizer.lr`, `layers[0]`); strings as they are, other values
    as JSON (`0.001`, `true`, `null`)."""
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and prefix:
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{index}]"))
        return out
    return {prefix: value if isinstance(value, str) else json.dumps(value, default=str)}


def _parsed(path: Path, name: str) -> Any:
    """One params file's contents, by its suffix; ParamsError when it cannot be read as such."""
    kind = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}.get(path.suffix.lower(), "TOML")
    try:
        text = read_small_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"params file {name} cannot be read as UTF-8 text ({unreadable(exc)})") from exc
    try:
        if kind == "YAML":
            import yaml  # noqa: PLC0415  (only when YAML params are read: not on every run's path)

            try:
                return yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(str(exc)) from exc
        return json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except ValueError as exc:  # json's, tomllib's and (above) YAML's errors
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ParamsError(f"params file {name} is not valid {kind}: {first}") from exc


def read_params(base: Path, files: Sequence[str], given: Mapping[str, str]) -> ParamsRecord | None:
    """The run's parameters: each file under `base` hashed and flattened (later files over earlier ones), the
    command line's over all; None when none were declared."""
    if not files and not given:
        return None
    hashes: dict[str, str] = {}
    values: dict[str, str] = {}
    for name in files:
        path = base / name
        if path.suffix.lower() not in SUFFIXES:
            raise ParamsError(f"params file {name} is not .yaml, .yml, .json or .toml")
        if not path.is_file():
            raise ParamsError(f"params file {name} does not exist in {base}")
        data = _parsed(path, name)
        if not isinstance(data, Mapping):
            raise ParamsError(f"params file {name} must hold a table of keys, not {type(data).__name__}")
        hashes[name] = sha256_file(path)
        values.update(flatten(data))
    values.update(given)
    return ParamsRecord(hashes, dict(given), dict(sorted(values.items())))

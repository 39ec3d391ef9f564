"""Formats declared once: a field's key, type, check and description live on a frozen dataclass, and writing,
reading, unknown-key detection ("did you mean") and the collection of every problem follow from that declaration.

A format is a frozen dataclass that subclasses `Codec`. Each field's type annotation says what the JSON/TOML value
must be (str, int, bool, datetime, a Literal, X | None, tuple[X, ...] or list[X], a table dict[str, X] /
Mapping[str, X], or another Codec, or a list or table of them); `field(...)` adds the key when it differs from the
name, a pattern or a check, a one-line description, how an absent key reads and when a value is left out.
`toml_text` writes a format as TOML, with tables, arrays of tables and inline tables as its fields ask. One path
rule for project-relative paths (`project_path_problem`) lives here too: the spec, the command line and the run
record all use it, and one strict JSON reader (`strict_json`) for what another machine may have written.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from datetime import datetime
from typing import Any, ClassVar, Literal, Self, TypeVar, dataclass_transform, get_args, get_origin

T = TypeVar("T", bound="Codec")
Check = Callable[[Any], "str | list[str] | None"]
KeyStyle = Literal["kebab", "snake"]


class _Absent:
    """The value of a key that is not there (distinct from null)."""

    def __repr__(self) -> str:
        return "nothing"


_ABSENT: Any = _Absent()


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` naming the closest of `choices` to a mistyped `word`, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def project_path_problem(path: str) -> str | None:
    """Why `path` cannot name a file or folder inside the project, or None: relative, `/` between names, no empty,
    `.` or `..` part, and no backslash (a Windows separator or a typo; a record keeps POSIX paths, and a container
    would see one odd name). The spec's paths, `run -i/--input` and `--output`, and a run record's paths all obey it."""
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(part in ("", ".", "..") for part in parts):
        return f"{path!r} must be a path inside the project (relative, / between names, without . or .., no \\)"
    return None


JSON_MAX_DEPTH = 64  # envlock's documents nest a few levels; every reader after this one may recurse freely


def strict_json(text: str | bytes, *, nan: bool = False) -> Any:
    """JSON as one reading only: UTF-8 without a byte order mark, every key of a table once, no NaN or Infinity
    (`nan=True`: a metrics file's NaN and Infinity, as Python's json writes them), nesting no deeper than
    JSON_MAX_DEPTH, no lone surrogate. Two readers (first key wins, last key wins) never see two documents.
    ValueError names the first problem."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError; json.loads would guess UTF-16 or -32
    if text.startswith("\ufeff"):
        raise ValueError("a byte order mark (BOM) before the JSON")

    def table(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for key, value in pairs:
            if key in found:
                raise ValueError(f"the key {key!r} twice in one table")
            found[key] = value
        return found

    def constant(name: str) -> Any:
        if nan:
            return float(name)
        raise ValueError(f"{name} is not a JSON number")

    def number(literal: str) -> float:
        value = float(literal)
        if value in (float("inf"), float("-inf")) and not nan:  # 1e400: no reader holds it as it is written
            raise ValueError(f"{literal[:20]} is not a finite number")
        return value

    try:
        document = json.loads(text, object_pairs_hook=table, parse_constant=constant, parse_float=number)
    except RecursionError as exc:
        raise ValueError(f"nested deeper than {JSON_MAX_DEPTH} tables or lists") from exc
    _shallow(document)
    return document


def _shallow(document: Any) -> None:
    """ValueError when tables and lists nest deeper than JSON_MAX_DEPTH or a string holds a lone surrogate (walked
    without recursion)."""
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= JSON_MAX_DEPTH:
                raise ValueError(f"nested deeper than {JSON_MAX_DEPTH} tables or lists")
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
            stack.extend((key, depth) for key in value if isinstance(value, dict))
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:  # "\\udc80": no character, and no UTF-8 writer takes it
                raise ValueError(f"a lone surrogate ({value[exc.start]!a}) in a string") from exc


class Problems:
    """Every problem found in one document, each with the key where it was found, to be reported all at once.

    `origin` (a file name) and `locate` (the line of a dotted key in that file) make `file:line: key: message`
    lines, in the order of the file; without them, `key: message` in the order found.
    """

    def __init__(self, origin: str = "", locate: Callable[[str], int | None] | None = None) -> None:
        self.origin = origin
        self.locate = locate
        self._found: list[tuple[int, str]] = []

    def add(self, where: str, message: str) -> None:
        """Note one problem at `where` (a dotted key, `a.b[0].c`)."""
        line = self.locate(where) if self.locate else None
        place = f"{self.origin}:{line}: " if line else f"{self.origin}: " if self.origin else ""
        self._found.append((line or 0, f"{place}{where}: {message}" if where else f"{place}{message}"))

    def unknown_keys(self, table: Mapping[str, Any], known: Iterable[str], where: str = "") -> None:
        """Note each key of `table` that is not in `known` (a hand edit or a typo), naming the closest known one."""
        choices = tuple(known)
        for key in sorted(set(map(str, table)) - set(choices)):
            self.add(_join(where, key), f"unknown key{did_you_mean(key, choices)}")

    @property
    def items(self) -> list[str]:
        """The problems as lines (in the file's order when lines are known)."""
        found = sorted(self._found, key=lambda entry: entry[0]) if self.locate else self._found
        return [text for _, text in found]

    def __bool__(self) -> bool:
        return bool(self._found)

    def __len__(self) -> int:
        return len(self._found)


@dataclasses.dataclass(frozen=True)
class Key:
    """One field's declaration: its key, description, check, and how it is read when absent and written when None."""

    key: str | None = None  # None: the field's name in the class's key style
    doc: str = ""
    pattern: re.Pattern[str] | None = None  # a string (or each string of a list) must match it whole
    check: Check | None = None  # more problems of a well-typed value, as phrases
    required: bool = False  # absent is a problem even though the field has a default
    omit_none: bool = False  # None is not written (older readers see only the keys they know)
    none_as: Any = None  # what None is written as ({} for a record part not taken yet)
    decoded: bool = True  # False: written, known, but checked and set by the owner (a version number)
    absent: Any = _ABSENT  # what an absent key reads as, for a field without a default (else: the default)
    items: Callable[[Any], str | None] | None = None  # a check of each item of a list, named at `key[index]`
    # TOML: an inline table, or a list of them one per line (else [table] / [[table]]); a list of plain values in a
    # [table] is written one per line too (a reordering is a small, readable diff)
    inline: bool = False
    quiet: bool = False  # the value may hold a secret (a password in a URL): a message names its type, never it


# A dataclass_transform field specifier: type checkers read `default` / `default_factory` from its own keywords, and
# each other keyword is one attribute of Key (dataclasses.field is as wide, for the same reason).
def field(  # noqa: PLR0913
    *,
    key: str | None = None,
    doc: str = "",
    pattern: re.Pattern[str] | None = None,
    check: Check | None = None,
    required: bool = False,
    omit_none: bool = False,
    none_as: Any = None,
    decoded: bool = True,
    absent: Any = _ABSENT,
    items: Callable[[Any], str | None] | None = None,
    inline: bool = False,
    quiet: bool = False,
    default: Any = _ABSENT,
    default_factory: Any = _ABSENT,
) -> Any:
    """A dataclass field with its declaration (see Key); a default is also what an absent key reads as."""
    declared = Key(key, doc, pattern, check, required, omit_none, none_as, decoded, absent, items, inline, quiet)
    defaults: dict[str, Any] = {}
    if default is not _ABSENT:
        defaults["default"] = default
    if default_factory is not _ABSENT:
        defaults["default_factory"] = default_factory
    return dataclasses.field(**defaults, metadata={"codec": declared})


@dataclasses.dataclass(frozen=True)
class Declared:
    """A field as the codec sees it: name, key, type, declaration, and its default (MISSING: required)."""

    name: str
    key: str
    type: Any
    spec: Key
    default: Callable[[], Any] | None
    nulls: bool = True  # False: the format has no null (TOML), and an optional value is only ever absent

    @property
    def type_name(self) -> str:
        """The value's type in words, for references and messages: `a list of strings`."""
        return _wanted(self.type if self.nulls else _without_none(self.type), self.spec.pattern)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class Codec:
    """Base of a declared format: `as_dict()` writes it, `decode()` reads it collecting every problem.

    Subclasses are frozen dataclasses (made so when declared); `keys="snake"` (class keyword) keeps field names
    as keys, the default turns `diff_sha256` into `diff-sha256`; `nulls=False` (class keyword) says the format
    has no null (TOML): an optional value is only ever absent, and messages do not offer null. `DERIVED` names
    keys written from the other fields (a digest of a listing): on read they must hold what the fields give.
    `invalid()` names the problems that involve several fields.
    """

    KEY_STYLE: ClassVar[KeyStyle] = "kebab"
    NULLS: ClassVar[bool] = True
    DERIVED: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}

    def __init_subclass__(cls, keys: KeyStyle | None = None, nulls: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass keeps its parent's style unless it names its own.
        cls.KEY_STYLE = keys or cls.KEY_STYLE
        cls.NULLS = cls.NULLS if nulls is None else nulls
        dataclasses.dataclass(frozen=True)(cls)  # in place: the class stays the one being declared

    @classmethod
    def declared(cls) -> tuple[Declared, ...]:
        """Every field's declaration, in order (cached on the class)."""
        cached = cls.__dict__.get("_declared")
        if cached is None:
            hints = typing.get_type_hints(cls)
            fields = dataclasses.fields(cls)  # type: ignore[arg-type]
            cached = tuple(_declared(cls.KEY_STYLE, cls.NULLS, hints[f.name], f) for f in fields)
            cls._declared = cached  # type: ignore[attr-defined]
        return typing.cast("tuple[Declared, ...]", cached)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The keys this format knows (declared and derived)."""
        return (*(d.key for d in cls.declared()), *cls.DERIVED)

    def invalid(self) -> Iterator[tuple[str, str]]:
        """Problems that involve several fields, as (key, message); asked only when each field is fine alone."""
        return iter(())

    def written(self) -> Iterator[tuple[Declared, Any]]:
        """Each declared field that is written, with its value (None already turned into `none_as`)."""
        for declared in self.declared():
            value = getattr(self, declared.name)
            if value is not None or not declared.spec.omit_none:
                yield declared, declared.spec.none_as if value is None else value

    def as_dict(self) -> dict[str, Any]:
        """The JSON/TOML form: declared keys in order, then the derived ones."""
        data = {declared.key: _encode(value) for declared, value in self.written()}
        return data | {key: derive(self) for key, derive in self.DERIVED.items()}

    @classmethod
    def decode(cls, data: object, problems: Problems, where: str = "") -> Self:
        """Read the JSON/TOML form; every problem goes to `problems` (the value returned is then a stand-in)."""
        table: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
        if not isinstance(data, Mapping):
            problems.add(where, f"must be a table, not {_shown(data)}")
        problems.unknown_keys(table, cls.keys(), where)
        found = len(problems)
        values = {}
        for declared in cls.declared():
            if not declared.spec.decoded:
                continue
            value = table.get(declared.key, _ABSENT)
            if value is _ABSENT and not declared.spec.required:
                if declared.default is not None:
                    values[declared.name] = declared.default()
                    continue
                if _optional(declared.type):
                    values[declared.name] = None  # absent counts as null: written before the key existed
                    continue
            values[declared.name] = _decode(declared.type, value, _join(where, declared.key), declared, problems)
        decoded = cls(**values)
        if len(problems) == found:
            for key, message in decoded.invalid():
                problems.add(_join(where, key), message)
        for key, derive in cls.DERIVED.items():
            if key not in table:
                problems.add(_join(where, key), "missing")
            elif table[key] != derive(decoded):
                problems.add(_join(where, key), "does not match the rest of its table (it is derived from it)")
        return decoded


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _declared(style: KeyStyle, nulls: bool, type_: Any, dc_field: dataclasses.Field[Any]) -> Declared:
    spec = dc_field.metadata.get("codec", Key())
    key = spec.key or (dc_field.name if style == "snake" else dc_field.name.replace("_", "-"))
    default: Callable[[], Any] | None = None
    if spec.absent is not _ABSENT:
        default = lambda: copy.copy(spec.absent)  # noqa: E731
    elif dc_field.default is not dataclasses.MISSING:
        value = dc_field.default
        default = lambda: value  # noqa: E731
    elif dc_field.default_factory is not dataclasses.MISSING:
        default = dc_field.default_factory
    return Declared(dc_field.name, key, type_, spec, default, nulls)


def _encode(value: Any) -> Any:
    if isinstance(value, Codec):
        return value.as_dict()
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _encode(item) for key, item in value.items()}
    return value


def _optional(type_: Any) -> bool:
    return _is_union(type_) and type(None) in get_args(type_)


def _without_none(type_: Any) -> Any:
    if not _optional(type_):
        return type_
    others = tuple(arg for arg in get_args(type_) if arg is not type(None))
    return others[0] if len(others) == 1 else typing.Union[others]  # noqa: UP007  (a union built at run time)


def _is_union(type_: Any) -> bool:
    return get_origin(type_) in (typing.Union, types.UnionType)


def _item(type_: Any) -> Any:
    """The type of each item of a list or each value of a table (None for other types)."""
    origin, args = get_origin(type_), get_args(type_)
    return args[0] if origin in (list, tuple) else args[1] if origin in (dict, Mapping) else None


def _is_codec(type_: Any) -> bool:
    return isinstance(type_, type) and issubclass(type_, Codec)


# The plain types a value may have: what they are called, and which JSON/TOML values are one (bool is no int).
_SCALARS: dict[Any, tuple[str, Callable[[Any], bool]]] = {
    str: ("a string", lambda value: isinstance(value, str)),
    bool: ("true or false", lambda value: isinstance(value, bool)),
    int: ("an integer", lambda value: isinstance(value, int) and not isinstance(value, bool)),
    datetime: ("a date-time", lambda value: isinstance(value, datetime)),
    type(None): ("null", lambda value: value is None),
}


def _wanted(type_: Any, pattern: re.Pattern[str] | None = None) -> str:
    """What a value of `type_` is, in words."""
    origin, args = get_origin(type_), get_args(type_)
    if _is_union(type_):
        return " or ".join(_wanted(arg, pattern) for arg in sorted(args, key=lambda arg: arg is type(None)))
    if type_ in _SCALARS:
        return f"a string like {pattern.pattern}" if type_ is str and pattern is not None else _SCALARS[type_][0]
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if _is_codec(type_):
        return "a table"
    if origin in (list, tuple):
        return "a list of " + _plural(_wanted(args[0], pattern))
    if origin in (dict, Mapping):
        return "a table of " + _plural(_wanted(args[1], pattern))
    raise TypeError(f"codecs: no rule for {type_!r}")  # a declaration error: caught by the tests of each format


def _plural(words: str) -> str:
    for one, many in (("a string", "strings"), ("an integer", "integers"), ("null", "nulls"), ("a table", "tables")):
        words = words.replace(one, many)
    return words


def _fits(type_: Any, value: Any, pattern: re.Pattern[str] | None) -> bool:
    """Whether a plain value has the shape `type_` asks for (codec tables are checked by decoding them)."""
    origin, args = get_origin(type_), get_args(type_)
    if _is_union(type_):
        return any(_fits(arg, value, pattern) for arg in args)
    if type_ in _SCALARS:
        fits = _SCALARS[type_][1](value)
        return fits and (type_ is not str or pattern is None or pattern.fullmatch(value) is not None)
    if origin is Literal:
        return isinstance(value, str) and value in args
    if origin in (list, tuple):
        return isinstance(value, list | tuple) and all(_fits(args[0], item, pattern) for item in value)
    if origin in (dict, Mapping):
        return isinstance(value, Mapping) and all(
            isinstance(k, str) and _fits(args[1], v, pattern) for k, v in value.items()
        )
    raise TypeError(f"codecs: no rule for {type_!r}")


def _decode(type_: Any, value: Any, where: str, declared: Declared, problems: Problems) -> Any:
    """One value read by its type; a problem noted (and a stand-in returned) when it does not fit."""
    if value is None and _optional(type_) and declared.nulls:
        return None
    others = [arg for arg in get_args(type_) if arg is not type(None)] if _optional(type_) else [type_]
    plain = others[0] if len(others) == 1 else type_
    origin = get_origin(plain)
    if _is_codec(plain) or _is_codec(_item(plain)):
        value = _decode_tables(plain, value, where, problems, optional=_optional(type_))
        return value if value is None else _checked(value, where, declared, problems)
    if value is _ABSENT:
        problems.add(where, "missing")
        return _stand_in(plain)
    if not _fits(plain, value, declared.spec.pattern):
        shown = _kind(value) if declared.spec.quiet else _shown(value)
        problems.add(where, f"must be {declared.type_name}, not {shown}")
        return _stand_in(plain)
    value = origin(value) if origin in (list, tuple) else dict(value) if origin in (dict, Mapping) else value
    return _checked(value, where, declared, problems)


def _checked(value: Any, where: str, declared: Declared, problems: Problems) -> Any:
    """A well-typed value, with the problems its checks find noted."""
    if declared.spec.items is not None:
        for index, item in enumerate(value):
            if (problem := declared.spec.items(item)) is not None:
                problems.add(f"{where}[{index}]", problem)
    if declared.spec.check is not None:
        found = declared.spec.check(value)
        for message in [found] if isinstance(found, str) else found or []:
            problems.add(where, message)
    return value


def _decode_tables(type_: Any, value: Any, where: str, problems: Problems, *, optional: bool) -> Any:
    """A nested format (a sub-table), or a list of them."""
    if value is _ABSENT:
        problems.add(where, "missing")
        return None
    if _is_codec(type_):
        # An empty table where one may be missing: a part not taken yet.
        return None if optional and value == {} else type_.decode(value, problems, where)
    origin, item = get_origin(type_), _item(type_)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            problems.add(where, f"must be a table of tables, not {_shown(value)}")
            return {}
        return {str(key): item.decode(entry, problems, _join(where, str(key))) for key, entry in value.items()}
    if not isinstance(value, list | tuple):
        problems.add(where, f"must be a list of tables, not {_shown(value)}")
        return origin()
    return origin(item.decode(entry, problems, f"{where}[{index}]") for index, entry in enumerate(value))


def toml_text(value: Codec, header: str = "") -> str:
    """`value` as a TOML document, `header` as its first comment lines: a nested format is a [table], a list of them
    [[an array of tables]], a table of them one [table.KEY] each; an `inline` field is an inline table (a list of
    them one per line), and everything inside an inline table is inline too."""
    import tomlkit  # noqa: PLC0415  (writing only: a host that only reads a lock, e.g. gpu-check, may lack it)

    document = tomlkit.document()
    for line in header.splitlines():
        document.add(tomlkit.comment(line))
    _fill(document, value, inline=False)
    return tomlkit.dumps(document)


def _fill(table: MutableMapping[str, Any], value: Codec, *, inline: bool) -> None:
    import tomlkit  # noqa: PLC0415

    for declared, item in value.written():
        written = _toml(item, declared.type, inline=inline or declared.spec.inline)
        if declared.spec.inline and not inline and isinstance(written, list):  # plain values, one per line
            array = tomlkit.array()
            array.multiline(True)
            array.extend(written)
            written = array
        table[declared.key] = written
    for key, derive in value.DERIVED.items():
        table[key] = derive(value)


def _toml(value: Any, type_: Any, *, inline: bool) -> Any:
    """One value of a declared type as tomlkit items (plain values are left to tomlkit)."""
    import tomlkit  # noqa: PLC0415

    item_type = _item(_without_none(type_))
    if isinstance(value, Codec):
        table = tomlkit.inline_table() if inline else tomlkit.table()
        _fill(table, value, inline=inline)
        return table
    if isinstance(value, list | tuple) and _is_codec(item_type):
        if inline:  # one per line: a version bump is a small, readable diff
            array = tomlkit.array()
            array.multiline(True)
            array.extend(_toml(item, item_type, inline=True) for item in value)
            return array
        tables = tomlkit.aot()  # even when empty (tomlkit writes it `key = []`, first in its table)
        for item in value:
            tables.append(_toml(item, item_type, inline=False))
        return tables
    if isinstance(value, Mapping):
        mapping = tomlkit.inline_table() if inline else tomlkit.table(is_super_table=_is_codec(item_type))
        for key, item in value.items():
            mapping[key] = _toml(item, item_type, inline=inline)
        return mapping
    if isinstance(value, list | tuple):
        return [_toml(item, item_type, inline=True) for item in value]
    return value


def _stand_in(type_: Any) -> Any:
    origin = get_origin(type_)
    if origin in (list, tuple):
        return origin()
    if origin in (dict, Mapping):
        return {}
    return {str: "", int: 0, bool: False}.get(type_)


def _kind(value: object) -> str:
    """What a value is, without showing it."""
    kinds = {dict: "a table", list: "a list", str: "a string", bool: "true or false", int: "an integer"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _shown(value: object) -> str:
    if value is _ABSENT:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def table_check(key_check: Callable[[str], str | None], value_check: Callable[[str], str | None]) -> Check:
    """A check of every entry of a table of strings: its key (a path) and its value (a digest)."""

    def check(table: Mapping[str, str]) -> list[str]:
        found = [key_check(key) for key in table] + [value_check(value) for value in table.values()]
        return [problem for problem in found if problem]

    return check


def each(check: Callable[[str], str | None]) -> Check:
    """A check of every string of a list."""
    return lambda values: [problem for value in values if (problem := check(value))]


def one_of(choices: Iterable[str]) -> Callable[[str], str | None]:
    """A check that a string is one of `choices`, with the closest named when it is not."""
    known = tuple(choices)
    return lambda value: (
        None if value in known else f"must be one of {', '.join(known)}, not {value!r}{did_you_mean(value, known)}"
    )


def matches(pattern: re.Pattern[str], what: str) -> Callable[[str], str | None]:
    """A check that a string matches `pattern` whole (`what` names the shape in the message)."""
    return lambda value: None if pattern.fullmatch(value) else f"{value!r} is not {what}"


def declared_path_problem(path: str) -> str | None:
    """The path rule for a declared input or output, which may name a folder with one or more trailing `/`."""
    return project_path_problem(path.rstrip("/"))


_SHA256 = re.compile(r"[0-9a-f]{64}")
# A table of project paths and the sha256 of their content (saved untracked files, inputs, parameter files).
PATH_DIGESTS = table_check(project_path_problem, matches(_SHA256, "a sha256"))

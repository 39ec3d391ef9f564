"""What a command-line argument names: a registry digest, a bundle, a lock, a file, a run or a local image.

Every command that takes such an argument says which kinds it accepts and calls `resolve`; the rules are tried in
this one order, and the first rule that matches a kind the command accepts wins:

1. digest  NAME@sha256:<64 hex>, a registry reference (a pushed image, a published run). Never looked up here.
2. a path that exists, as given (relative to the working directory), else under the project (-C):
   bundle  a file that is a tar (named .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz, or by its first block);
   lock    a file, or a folder holding envlock.lock;
   file    any other file (an attestation, a file a run wrote).
3. run     text shaped like a run id or a prefix of one (20261126T075012Z-3f9a1c) naming one run of the project.
4. image   a local image (name:tag or ID) that the engine knows; asked last, and only then.

Ambiguous (UsageError, exit 2): text that names an existing path and also a digest or a run the command accepts;
write ./NAME for the path, or more of the run id. A run prefix that several runs share: RunNotFoundError (13).
Nothing named (one line naming every kind the command accepts): RunNotFoundError (13) where the text can only have
meant a run (the command accepts runs only, or the text has a run id's shape), UsageError (2) otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar, overload

from envlock.errors import RunNotFoundError, UsageError
from envlock.paths import LOCK_FILE
from envlock.run.records import RunRecord, RunStore
from envlock.safetar import looks_like_tar

if TYPE_CHECKING:
    from envlock.engine.docker import Engine

Kind = Literal["digest", "bundle", "lock", "file", "run", "image"]
ORDER: tuple[Kind, ...] = ("digest", "bundle", "lock", "file", "run", "image")  # the rule order above
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

# A registry reference by digest: the name starts with a letter or digit (so ./NAME is always a path).
_DIGEST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*@sha256:[0-9a-f]{64}")
# A run id (20261126T075012Z-3f9a1c) or any prefix of one: the only text ever looked up as a run.
_RUN_PREFIX = re.compile(r"[0-9]{1,8}|[0-9]{8}T[0-9]{0,6}|[0-9]{8}T[0-9]{6}Z(-[0-9a-f]{0,6})?")

_WHAT: dict[Kind, tuple[str, str]] = {  # kind → (what it is, how to write one) for the messages
    "digest": ("a registry digest", "REGISTRY/REPO@sha256:…"),
    "bundle": ("a bundle", "a file from `envlock bundle`"),
    "lock": ("a lock file", "a path to envlock.lock (or its folder)"),
    "file": ("a file", "a path to a file"),
    "run": ("a run of this project", "a run id from `envlock runs` (a unique prefix is enough)"),
    "image": ("a local image", "an image name:tag or ID"),
}


class Ref:
    """What every reference has: the text as typed (`text`, a field of each) and its kind."""

    kind: ClassVar[Kind]


@dataclass(frozen=True)
class DigestRef(Ref):
    """A registry reference by digest, e.g. 127.0.0.1:5000/team/demo@sha256:… (as typed)."""

    text: str
    kind: ClassVar[Kind] = "digest"

    @property
    def name(self) -> str:
        """The repository part, before the @."""
        return self.text.partition("@")[0]

    @property
    def digest(self) -> str:
        """sha256:<64 hex>."""
        return self.text.partition("@")[2]


@dataclass(frozen=True)
class _PathRef(Ref):
    """An existing file, as typed and as found; each kind of file is its own class (resolve tells them apart)."""

    text: str
    path: Path


@dataclass(frozen=True)
class BundleRef(_PathRef):
    """A bundle file (a tar from `envlock bundle`, or anything tar-shaped: `unpacked` judges it)."""

    kind: ClassVar[Kind] = "bundle"


@dataclass(frozen=True)
class LockRef(_PathRef):
    """A lock file (a folder holding envlock.lock names its lock)."""

    kind: ClassVar[Kind] = "lock"


@dataclass(frozen=True)
class FileRef(_PathRef):
    """Any other existing file: an attestation for `verify`, a file a run wrote for `lineage`."""

    kind: ClassVar[Kind] = "file"


@dataclass(frozen=True)
class RunRef(Ref):
    """One run of the project: its full id and its record as read when the argument was resolved."""

    text: str
    run_id: str
    record: RunRecord = field(compare=False, repr=False)
    kind: ClassVar[Kind] = "run"


@dataclass(frozen=True)
class ImageRef(Ref):
    """A local image, by the name or ID typed, and the ID the engine gave it."""

    text: str
    image_id: str
    kind: ClassVar[Kind] = "image"


Reference = DigestRef | BundleRef | LockRef | FileRef | RunRef | ImageRef


def is_tar(path: Path) -> bool:
    """True for a file that is a tar (plain, gzip, bz2 or xz: only its first block is read) or is named as one;
    whether it is a good bundle is for the bundle reader to say."""
    return path.is_file() and (path.name.endswith(TAR_SUFFIXES) or looks_like_tar(path))


A = TypeVar("A", bound=Ref)
B = TypeVar("B", bound=Ref)
C = TypeVar("C", bound=Ref)


@overload
def resolve(text: str, accepts: tuple[type[A]], store: RunStore, engine: Callable[[], Engine] | None = None) -> A: ...
@overload
def resolve(
    text: str, accepts: tuple[type[A], type[B]], store: RunStore, engine: Callable[[], Engine] | None = None
) -> A | B: ...
@overload
def resolve(
    text: str, accepts: tuple[type[A], type[B], type[C]], store: RunStore, engine: Callable[[], Engine] | None = None
) -> A | B | C: ...
@overload
def resolve(
    text: str, accepts: tuple[type[Ref], ...], store: RunStore, engine: Callable[[], Engine] | None = None
) -> Ref: ...
def resolve(
    text: str, accepts: tuple[type[Ref], ...], store: RunStore, engine: Callable[[], Engine] | None = None
) -> Ref:
    """What `text` names among the kinds of reference a command accepts (the classes, in any order), by the one
    rule order of this module; `engine` is asked only when no other rule matched."""
    kinds = tuple(kind for kind in ORDER if kind in {cls.kind for cls in accepts})
    path = _existing(text, store.project_dir) if {"bundle", "lock", "file"} & set(kinds) else None
    if "digest" in kinds and _DIGEST.fullmatch(text):
        if path is not None:
            raise _ambiguous(text, path, "a registry digest")
        return DigestRef(text)
    if path is not None:
        found = _path_ref(text, path, kinds)
        if found is not None:
            if "run" in kinds and _RUN_PREFIX.fullmatch(text) and store.matching(text):
                raise _ambiguous(text, path, "a run of this project")
            return found
    if "run" in kinds and _RUN_PREFIX.fullmatch(text):
        matches = store.matching(text)
        if len(matches) > 1:
            shown = ", ".join(matches[:3]) + (", …" if len(matches) > 3 else "")
            raise RunNotFoundError(f"{text!r} matches several runs ({shown})", hint="give more of the run id")
        if matches:
            return RunRef(text, matches[0], store.load(matches[0]))
    if "image" in kinds and engine is not None and text:
        image_id = engine().image_id(text)
        if image_id is not None:
            return ImageRef(text, image_id)
    raise _unknown(text, kinds)


def resolve_run(text: str, store: RunStore) -> RunRef:
    """A run of the project, for the commands that take nothing else (`runs show`, `attest`, `push`, `bundle`)."""
    return resolve(text, (RunRef,), store)


def _existing(text: str, project_dir: Path) -> Path | None:
    """The path `text` names, as given, else under the project: a file, or a folder holding envlock.lock."""
    if not text:
        return None
    given = Path(text)
    for candidate in (given,) if given.is_absolute() else (given, project_dir / given):
        if candidate.is_file() or (candidate / LOCK_FILE).is_file():
            return candidate
    return None


def _path_ref(text: str, path: Path, accepts: tuple[Kind, ...]) -> BundleRef | LockRef | FileRef | None:
    if path.is_dir():
        return LockRef(text, path / LOCK_FILE) if "lock" in accepts else None
    if "bundle" in accepts and is_tar(path):
        return BundleRef(text, path)
    if "lock" in accepts:
        return LockRef(text, path)
    return FileRef(text, path) if "file" in accepts else None


def _ambiguous(text: str, path: Path, other: str) -> UsageError:
    return UsageError(
        f"{text!r} is ambiguous: it names the path {path} and {other}",
        hint=f"write ./{text} for the path" + (", or more of the run id" if other.startswith("a run") else ""),
    )


def _unknown(text: str, accepts: tuple[Kind, ...]) -> UsageError | RunNotFoundError:
    kinds = [kind for kind in ORDER if kind in accepts]
    what = [_WHAT[kind][0] for kind in kinds]
    named = what[0] if len(what) == 1 else f"{', '.join(what[:-1])} or {what[-1]}"
    ways = [_WHAT[kind][1] for kind in kinds]
    hint = "pass " + (ways[0] if len(ways) == 1 else f"{'; '.join(ways[:-1])}; or {ways[-1]}")
    if kinds == ["run"] or ("run" in kinds and _RUN_PREFIX.fullmatch(text)):
        return RunNotFoundError(f"{text!r} is not {named}", hint=hint)
    return UsageError(f"{text!r} is not {named}", hint=hint)

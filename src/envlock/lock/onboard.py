"""`envlock init`: another tool's environment file → `[tool.envlock]` in pyproject.toml, formatting kept.

Imported pins stay exact: a lock's versions become `constraints` (they bound versions, never add packages), so
the first `envlock lock` gives the same versions as the source lock. Running it again merges: the source's entries
are added or updated, the user's own are kept (dropped only with `prune`); running it twice changes nothing.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Array, Table, Whitespace

from envlock.errors import ImportSourceError, SpecError
from envlock.fsutil import atomic_write_text, read_small_text, sha256_file, unreadable
from envlock.lock import recipes
from envlock.lock.backend import is_buildable
from envlock.lock.credentials import mask
from envlock.lock.importers import PYPI, SOURCES, Imported, detect, import_file
from envlock.lock.spec import PYPROJECT, Spec, parse_spec
from envlock.paths import LOCK_FILE, ProjectLayout

# Directories training code commonly writes: proposed for .gitignore (and for `outputs` in [tool.envlock]).
OUTPUT_DIRS = ("out", "outs", "output", "outputs", "checkpoints", "ckpt", "mlruns", "wandb", "lightning_logs")
# `--from` one of these: the project's own package (its build backend is asked at lock time), not a file to import.
PACKAGE_FILES = ("setup.py", "setup.cfg", "pyproject.toml")
# envlock's own state that never belongs in git: image archives are large and per machine.
_STATE = ProjectLayout(Path())  # relative: the layout as .gitignore lines name it
STATE_IGNORED = (f"{_STATE.archives.as_posix()}/", _STATE.images.as_posix())


@dataclass(frozen=True)
class InitOutcome:
    """What `envlock init` found, wrote and proposes."""

    pyproject: Path
    source: Path | None
    created: bool  # pyproject.toml did not exist
    changes: tuple[str, ...]  # one line per entry added, updated or dropped; empty: nothing changed
    imported: Imported | None
    outputs: tuple[str, ...]  # output directories found in the project
    gitignore: tuple[str, ...]  # lines .gitignore lacks (written with write_gitignore)
    gitignore_written: bool = False
    commit: tuple[str, ...] = field(default=("pyproject.toml", LOCK_FILE))
    kept: tuple[str, ...] = ()  # entries the source no longer names, kept (`--prune` drops them)
    written: bool = False  # pyproject.toml was written (never with dry_run)


def _load_document(path: Path) -> tuple[tomlkit.TOMLDocument, str, bool]:
    if not path.exists():
        return tomlkit.document(), "", True
    try:
        text = read_small_text(path)
        return tomlkit.parse(text), text, False
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(
            f"cannot read {path}: {unreadable(exc)}", hint="pyproject.toml must be a UTF-8 text file in the project"
        ) from exc
    except TOMLKitError as exc:
        raise SpecError(f"{path} is not valid TOML: {exc}", hint="fix the syntax at the line and column shown") from exc


def _envlock_table(document: tomlkit.TOMLDocument) -> Table:
    tool = document.get("tool")
    if tool is None:
        tool = tomlkit.table(is_super_table=True)
        document["tool"] = tool
    table = tool.get("envlock")
    if table is None:
        table = tomlkit.table()
        tool["envlock"] = table
    if not isinstance(table, Table):
        raise SpecError("tool.envlock in pyproject.toml must be a table", hint="write it as [tool.envlock]")
    return table


def _array(items: list[str]) -> Any:
    array = tomlkit.array()
    array.extend(items)
    return array.multiline(len(items) > 1)


def _wanted(imported: Imported, document: dict[str, Any]) -> dict[str, Any]:
    """The [tool.envlock] keys the source decides; keys it does not mention are left as they are."""
    wanted: dict[str, Any] = {}
    if imported.requirements:
        wanted["requirements"] = list(dict.fromkeys(imported.requirements))
    elif not document.get("project", {}).get("dependencies") and "requirements" not in document.get("tool", {}).get(
        "envlock", {}
    ):
        raise ImportSourceError(
            f"{imported.source.name} names no packages to lock",
            hint="add them to [project] dependencies or [tool.envlock] requirements",
        )
    if imported.constraints:
        wanted["constraints"] = list(dict.fromkeys(imported.constraints))
    if imported.index_url and imported.index_url != PYPI:
        wanted["index-url"] = imported.index_url
    if imported.extra_index_urls:
        wanted["extra-index-urls"] = list(imported.extra_index_urls)
    if imported.cuda:
        wanted["cuda"] = imported.cuda
    return wanted


def _python(imported: Imported, table: dict[str, Any]) -> tuple[str | None, str | None]:
    """Python to write (only one the base carries), or a note on why not."""
    if imported.python is None:
        return None, None
    base = str(table.get("base", recipes.DEFAULT_BASE))
    if recipes.is_image_reference(base):
        return imported.python, None
    carried = recipes.load_recipe(base).python
    if imported.python == carried:
        return imported.python, None
    return None, (
        f"{imported.source.name} asks for Python {imported.python}; the {base} base carries {carried}: set "
        f'base = "repo:tag@sha256:…" and python = "{imported.python}" in [tool.envlock] to keep it'
    )


def _detect_outputs(project_dir: Path) -> tuple[str, ...]:
    return tuple(name for name in OUTPUT_DIRS if (project_dir / name).is_dir())


def _gitignore_missing(project_dir: Path, lines: list[str]) -> tuple[str, ...]:
    path = project_dir / ".gitignore"
    present = set()
    if path.is_file():
        present = {line.strip().strip("/") for line in _read_gitignore(path).splitlines()}
    return tuple(
        line for line in lines if line.strip("/") not in present and line.lstrip("/").strip("/") not in present
    )


def _key(entry: str, key: str) -> str:
    """What makes two entries "the same": a requirement's name and marker (uv.lock forks a name by marker)."""
    if key not in ("requirements", "constraints"):
        return entry
    try:
        parsed = Requirement(entry)
    except InvalidRequirement:
        return entry  # a broken hand-written line is kept as it is; `envlock lock` names it
    return f"{canonicalize_name(parsed.name)};{parsed.marker or ''}"


@dataclass
class _Merge:
    """What one `init` does to [tool.envlock]: change lines, and the entries it keeps for the user."""

    source: str
    prune: bool
    project_dir: Path
    changes: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def array(self, table: Table, key: str, wanted: list[str]) -> None:
        """Add and update the source's entries in place (comments stay); keep the others unless pruning."""
        current = table.get(key)
        if current is None:
            table[key] = _array(wanted)
            self.changes += [f"+ {key}: {entry}" for entry in wanted]
            return
        if not isinstance(current, Array):
            raise SpecError(f"tool.envlock.{key} in pyproject.toml must be a list", hint=f"write it as {key} = [...]")
        by_key = {_key(entry, key): entry for entry in wanted}
        seen: set[str] = set()
        changes: list[str] = []
        kept: list[str] = []
        for index in reversed(range(len(current))):  # backwards: deleting keeps the earlier indexes valid
            entry = str(current[index])
            found = by_key.get(_key(entry, key))
            if found is None:
                if self.prune:
                    del current[index]
                    changes.append(f"- {key}: {entry} (not in {self.source}; --prune)")
                else:
                    kept.append(f"{key}: {entry}")
                continue
            seen.add(_key(entry, key))
            if found != entry:
                current[index] = found
                changes.append(f"~ {key}: {entry} -> {found}")
        self.changes += reversed(changes)
        self.kept += reversed(kept)
        for entry in wanted:
            if _key(entry, key) not in seen:
                current.append(entry)
                seen.add(_key(entry, key))
                self.changes.append(f"+ {key}: {entry}")
        if len(current) > 1:
            current.multiline(True)

    def imported(self, table: Table, imported: Imported, document: dict[str, Any]) -> None:
        """Merge every key the source decides."""
        wanted = _wanted(imported, document)
        python, note = _python(imported, table.unwrap())
        if python is not None:
            wanted["python"] = python
        if note:
            imported.notes.append(note)
        for key, value in wanted.items():
            if isinstance(value, list):
                self.array(table, key, value)
            else:
                self.scalar(table, key, value)
        self.record(table, imported)

    def record(self, table: Table, imported: Imported) -> None:
        """imported-from = {path, sha256}: what `lock --check` compares and `lock` re-imports when it moved."""
        project_dir = self.project_dir.resolve()
        try:
            relative = imported.source.resolve().relative_to(project_dir).as_posix()
        except ValueError:
            imported.notes.append(f"{imported.source} is outside the project: `envlock lock` will not follow it")
            return
        wanted = {"path": relative, "sha256": sha256_file(imported.source)}
        before = table.get("imported-from")
        if before is not None and before.unwrap() == wanted:
            return
        record = tomlkit.inline_table()
        record.update(wanted)
        table["imported-from"] = record
        self.changes.append(
            f"{'~' if before is not None else '+'} imported-from = {relative} (sha256 {wanted['sha256'][:12]})"
        )

    def scalar(self, table: Table, key: str, value: str) -> None:
        """The source decides this key: set it, saying what it was."""
        before = table.get(key)
        if before is not None and before.unwrap() == value:
            return
        table[key] = value
        was = "" if before is None else f"{json.dumps(before.unwrap())} -> "
        self.changes.append(f"{'~' if before is not None else '+'} {key} = {was}{json.dumps(value)}")


def _spaced(table: Table) -> None:
    """A blank line after [tool.envlock], so that a table after it stands apart (an extra one at the end is cut)."""
    body = table.value.body
    if body and not isinstance(body[-1][1], Whitespace):
        table.add(tomlkit.nl())


def _source(project_dir: Path, source: Path | None) -> Path | None:
    """The file to import: the one named (relative to the project when not found as given), or the first found."""
    if source is None:
        return detect(project_dir)
    if not source.is_absolute() and not source.exists():
        return project_dir / source
    return source


def _check_valid(text: str, project_dir: Path, source: Path | None) -> None:
    """What init would write must load: a source that makes [tool.envlock] invalid is refused before writing."""
    try:
        parse_spec(tomllib.loads(text), project_dir, project_dir / PYPROJECT, text)
    except SpecError as exc:
        raise ImportSourceError(
            f"what {source.name if source else PYPROJECT} says would make an invalid [tool.envlock]: {exc.message}",
            hint="fix the source file, or import a different one with --from FILE",
            details=exc.details,
        ) from exc


def _read_gitignore(path: Path) -> str:
    try:
        return read_small_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(
            f"cannot read {path}: {unreadable(exc)}", hint="make it a UTF-8 text file, or drop --gitignore"
        ) from exc


def _append_gitignore(project_dir: Path, missing: tuple[str, ...]) -> None:
    gitignore = project_dir / ".gitignore"
    old = _read_gitignore(gitignore) if gitignore.is_file() else ""
    atomic_write_text(gitignore, old + ("" if old.endswith("\n") or not old else "\n") + "\n".join(missing) + "\n")


def init_project(
    project_dir: Path,
    source: Path | None = None,
    *,
    write_gitignore: bool = False,
    prune: bool = False,
    dry_run: bool = False,
) -> InitOutcome:
    """Merge `source` (or the first environment file found) into pyproject.toml; propose .gitignore lines.

    Entries the source names are added or updated; entries it does not name are kept (dropped with `prune`).
    With `dry_run` nothing is written: the outcome says what would change.
    """
    path = project_dir / PYPROJECT
    document, before, created = _load_document(path)
    plain = document.unwrap()
    packaged = is_buildable(project_dir, plain)
    # --from setup.py: the project's own package, read by its build backend at lock time; nothing to import.
    own_package = source is not None and source.name in PACKAGE_FILES and packaged
    source = None if own_package else _source(project_dir, source)
    imported = import_file(source, plain) if source is not None else None
    if imported is None and not plain.get("project", {}).get("dependencies") and not packaged:
        raise ImportSourceError(
            f"nothing to import in {project_dir}: no {', '.join(SOURCES[:-2])} or environment.yml, no [project] "
            "dependencies, and no package (setup.py, setup.cfg, [build-system])",
            hint="name the file with --from FILE",
        )
    merge = _Merge(imported.source.name if imported else PYPROJECT, prune, project_dir)
    table = _envlock_table(document)  # created when missing: an empty one still says the project is onboarded
    if imported is not None:
        merge.imported(table, imported, plain)
    changes = merge.changes
    if changes:
        _spaced(table)
    outputs = _detect_outputs(project_dir)
    text = tomlkit.dumps(document)
    if text != before:
        text = text.rstrip("\n") + "\n"
    written = False
    if text != before:
        if not changes and packaged:
            what = "setup.py" if (project_dir / "setup.py").is_file() else "its build backend"
            changes.append(
                f"+ [tool.envlock] (empty: the project's own package, as {what} declares it, and its dependencies "
                "are installed)"
            )
        elif not changes:
            changes.append("+ [tool.envlock] (empty: [project] dependencies are the requirements)")
        _check_valid(text, project_dir, source)
        if not dry_run:
            atomic_write_text(path, text)
            written = True
    missing = _gitignore_missing(project_dir, [*(f"{o}/" for o in outputs), *STATE_IGNORED])
    if write_gitignore and missing and not dry_run:
        _append_gitignore(project_dir, missing)
    return InitOutcome(
        path,
        source,
        created,
        tuple(mask(line) for line in changes),  # an index URL's password, written in the source, is not shown
        imported,
        outputs,
        missing,
        gitignore_written=bool(write_gitignore and missing and not dry_run),
        kept=tuple(mask(line) for line in merge.kept),
        written=written,
    )


def follow_source(spec: Spec, *, dry_run: bool = False) -> InitOutcome | None:
    """Re-import the file `init` imported when it changed since (None when it did not): `lock` follows it."""
    source = spec.imported_from
    if source is None or not source.changed(spec.project_dir):
        return None
    file = spec.project_dir / source.path
    if not file.is_file():
        raise ImportSourceError(
            f"{source.path} was imported (tool.envlock.imported-from) but is gone",
            hint="import another file with `envlock init --from FILE`, or delete imported-from to keep the pins",
        )
    return init_project(spec.project_dir, file, dry_run=dry_run)

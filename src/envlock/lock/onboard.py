"""`envlock init`: another tool's environment file → `[tool.envlock]` in pyproject.toml, formatting kept.

Imported pins stay exact: a lock's versions become `constraints` (they bound versions, never add packages), so
the first `envlock lock` gives the same versions as the source lock. Running it twice changes nothing.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Table

from envlock.errors import ImportSourceError, SpecError
from envlock.fsutil import atomic_write_text
from envlock.lock import recipes
from envlock.lock.importers import PYPI, Imported, detect, import_file
from envlock.lock.spec import PYPROJECT, parse_spec

# Directories training code commonly writes: proposed for .gitignore (and for `outputs` in [tool.envlock]).
OUTPUT_DIRS = ("out", "outs", "output", "outputs", "checkpoints", "ckpt", "mlruns", "wandb", "lightning_logs")
# envlock's own state that never belongs in git: image archives are large and per machine.
STATE_IGNORED = (".envlock/archives/", ".envlock/images.json")


@dataclass(frozen=True)
class InitOutcome:
    """What `envlock init` found, wrote and proposes."""

    pyproject: Path
    source: Path | None
    created: bool  # pyproject.toml did not exist
    changes: tuple[str, ...]  # one line per key written; empty: nothing changed
    imported: Imported | None
    outputs: tuple[str, ...]  # output directories found in the project
    gitignore: tuple[str, ...]  # lines .gitignore lacks (written with write_gitignore)
    gitignore_written: bool = False
    commit: tuple[str, ...] = field(default=("pyproject.toml", "envlock.lock"))


def _load_document(path: Path) -> tuple[tomlkit.TOMLDocument, str, bool]:
    if not path.exists():
        return tomlkit.document(), "", True
    try:
        text = path.read_text(encoding="utf-8")
        return tomlkit.parse(text), text, False
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read {path}: {exc}") from exc
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
        present = {line.strip().strip("/") for line in path.read_text(encoding="utf-8").splitlines()}
    return tuple(
        line for line in lines if line.strip("/") not in present and line.lstrip("/").strip("/") not in present
    )


def init_project(project_dir: Path, source: Path | None = None, *, write_gitignore: bool = False) -> InitOutcome:
    """Import `source` (or the first environment file found) into pyproject.toml; propose .gitignore lines."""
    path = project_dir / PYPROJECT
    document, before, created = _load_document(path)
    plain = document.unwrap()
    if source is None:
        source = detect(project_dir)
    elif not source.is_absolute() and not source.exists():
        source = project_dir / source
    imported = import_file(source, plain) if source is not None else None
    if imported is None and not plain.get("project", {}).get("dependencies"):
        raise ImportSourceError(
            f"nothing to import in {project_dir}: no requirements.txt, uv.lock, poetry.lock, pylock.toml or "
            "environment.yml, and no [project] dependencies",
            hint="name the file with --from FILE",
        )
    changes: list[str] = []
    table = _envlock_table(document)
    if imported is not None:
        wanted = _wanted(imported, plain)
        python, note = _python(imported, table.unwrap())
        if python is not None:
            wanted["python"] = python
        if note:
            imported.notes.append(note)
        for key, value in wanted.items():
            if table.get(key) is not None and table[key].unwrap() == value:
                continue
            table[key] = _array(value) if isinstance(value, list) else value
            count = f"{len(value)} entries" if isinstance(value, list) else repr(value)
            changes.append(f"[tool.envlock] {key} = {count} (from {imported.source.name})")
    outputs = _detect_outputs(project_dir)
    text = tomlkit.dumps(document)
    if text != before:
        if not changes:
            changes.append("[tool.envlock] added (empty: [project] dependencies are the requirements)")
        try:
            parse_spec(tomllib.loads(text), project_dir, path, text)
        except SpecError as exc:
            raise ImportSourceError(
                f"what {source.name if source else PYPROJECT} says would make an invalid [tool.envlock]: {exc.message}",
                hint="fix the source file, or import a different one with --from FILE",
                details=exc.details,
            ) from exc
        atomic_write_text(path, text)
    missing = _gitignore_missing(project_dir, [*(f"{o}/" for o in outputs), *STATE_IGNORED])
    if write_gitignore and missing:
        gitignore = project_dir / ".gitignore"
        old = gitignore.read_text(encoding="utf-8") if gitignore.is_file() else ""
        atomic_write_text(gitignore, old + ("" if old.endswith("\n") or not old else "\n") + "\n".join(missing) + "\n")
    return InitOutcome(
        path,
        source,
        created,
        tuple(changes),
        imported,
        outputs,
        missing,
        gitignore_written=bool(write_gitignore and missing),
    )

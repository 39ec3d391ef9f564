"""The documentation holds: the reference is what the code generates, every shell example in README.md and docs/
runs here or is marked (what it needs, or the test that runs it), every envlock command line names real commands
and options, every link leads to a file, and the README stays short."""

from __future__ import annotations

import ast
import difflib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from envlock.cli import docgen
from envlock.cli.app import load_commands
from envlock.cli.root import app
from envlock.errors import EXIT_CODES
from envlock.lock.spec import spec_keys

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
README_MAX_LINES = 200
# A block's language: shell examples (run or marked), or text that is not run (synopses, file contents, output).
SHELL = ("sh", "bash")
NOT_RUN = ("text", "toml", "json", "yaml", "python", "dockerfile")
# What a marked example may need that this machine's test suite cannot give it; `<!-- needs: WHAT -->` before it.
NEEDS = {
    "gpu": "an NVIDIA GPU and driver (none here: scripts/gpu-check.sh is the check to run on one)",
    "cluster": "a real multi-node Slurm cluster with a shared filesystem",
    "kubernetes": "a Kubernetes cluster (kubectl)",
    "root": "root or sudo: it changes the machine itself (apt packages, daemons, groups, shared folders)",
    "time": "minutes of machine time and the network: a benchmark, run by hand",
}
MARK = re.compile(r"^<!-- (needs|covered-by): (.+?) -->$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file, with the mark written on the line before it."""

    path: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    mark: tuple[str, str] | None

    @property
    def where(self) -> str:
        """FILE:LINE, for messages and test ids."""
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").split("\n")
    found, index = [], 0
    while index < len(lines):
        fence = re.match(r"^(\s*)```(\S*)\s*$", lines[index])
        if not fence:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
        before = lines[index - 1].strip() if index else ""
        mark = MARK.match(before)
        body = [line.removeprefix(fence.group(1)) for line in lines[index + 1 : end]]
        found.append(
            Block(path, index + 1, fence.group(2), "\n".join(body), (mark.group(1), mark.group(2)) if mark else None)
        )
        index = end + 1
    return found


BLOCKS = [block for path in DOCS for block in _blocks(path)]
RUN_HERE = [b for b in BLOCKS if b.language in SHELL and b.mark is None]


def test_the_reference_is_what_the_code_generates(tmp_path: Path) -> None:
    written = {path.name for path in docgen.write_reference(tmp_path)}
    committed = {path.name for path in (ROOT / "docs" / "reference").iterdir()}
    assert committed == written, "docs/reference/ holds other files than the generator writes"
    differences: list[str] = []
    for name in sorted(written):
        old = (ROOT / "docs" / "reference" / name).read_text(encoding="utf-8").splitlines(keepends=True)
        new = (tmp_path / name).read_text(encoding="utf-8").splitlines(keepends=True)
        differences += difflib.unified_diff(old, new, f"docs/reference/{name}", f"generated {name}")
    assert differences == [], "the reference is out of date: run `bash scripts/docs.sh`\n" + "".join(differences)


def test_the_exit_code_reference_is_the_table() -> None:
    text = (ROOT / "docs" / "reference" / "exit-codes.md").read_text(encoding="utf-8")
    section = text.split("| code | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M))
    assert {int(code): meaning for code, meaning in rows.items()} == EXIT_CODES


def test_every_config_key_of_the_spec_is_in_the_reference() -> None:
    text = (ROOT / "docs" / "reference" / "config.md").read_text(encoding="utf-8")
    documented = re.findall(r"^\| `([a-z-]+)` \|", text, re.M)
    assert documented == [key for key, _, _ in spec_keys()]


def test_the_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_every_code_block_says_its_language() -> None:
    unknown = [f"{b.where} ```{b.language}" for b in BLOCKS if b.language not in (*SHELL, *NOT_RUN)]
    assert unknown == [], f"a block is one of {SHELL} (an example) or {NOT_RUN} (not run)"


def _covering_tests(names: str) -> list[tuple[Path, str]]:
    found = []
    for name in names.split(","):
        file, _, function = name.strip().partition("::")
        found.append((ROOT / file, function))
    return found


def _envlock_lines(text: str) -> list[tuple[int, str]]:
    """Each `envlock …` command of a block (comments dropped, `a && b` split), as (line offset, arguments)."""
    found = []
    for offset, raw in enumerate(text.split("\n")):
        code = re.sub(r"\s#\s.*$|^#.*$", "", raw)
        for command in re.split(r"&&|;", code):
            if match := re.match(r"^\s*(?:\S*/)?envlock\s+(.*)$", command):
                found.append((offset, match[1]))
    return found


def _subcommands(text: str) -> set[str]:
    """The envlock subcommands an example runs (`envlock runs show …` → runs)."""
    return {arguments.split()[0] for _, arguments in _envlock_lines(text) if not arguments.startswith("-")}


def test_every_shell_example_runs_here_or_is_marked() -> None:
    problems = []
    for block in BLOCKS:
        if block.mark is None:
            continue
        kind, value = block.mark
        if block.language not in SHELL:
            problems.append(f"{block.where}: only a shell example is marked")
        elif kind == "needs":
            unknown = [n for n in value.split(", ") if n not in NEEDS]
            problems += [f"{block.where}: needs {n!r}, not one of {sorted(NEEDS)}" for n in unknown]
        else:
            sources = ""
            for file, function in _covering_tests(value):
                if not file.is_file():
                    problems.append(f"{block.where}: no test file {file.relative_to(ROOT)}")
                    continue
                source = file.read_text(encoding="utf-8")
                tree = ast.parse(source) if file.suffix == ".py" else ast.Module(body=[], type_ignores=[])
                defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
                if function and function not in defined:
                    problems.append(f"{block.where}: {file.relative_to(ROOT)} has no {function}")
                sources += source
            # The test that covers an example at least runs each of its envlock commands.
            problems += [
                f"{block.where}: {value} never runs `envlock {name}`"
                for name in sorted(_subcommands(block.text))
                if f'"{name}"' not in sources
            ]
    assert problems == []


def _command_tree() -> Any:
    load_commands([])
    return typer.main.get_command(app)


def _option_problems(line: str, root: Any) -> list[str]:
    """What in one `envlock …` line is not a command or option of the CLI (`[--a|--b]`, `--x/--no-x` read as
    alternatives; a lowercase word where a group expects its command must be one)."""
    command, path, problems = root, ["envlock"], []
    for token in line.split():
        if token == "--" or (path[1:2] == ["submit"] and token == "--slurm"):
            break  # the rest is the user's command (or sbatch's options)
        pieces = [p for p in re.split(r"[\[\]()|=…,]", token) if p]
        subcommands = getattr(command, "commands", None)
        for piece in pieces:
            if piece.startswith("-") and len(piece) > 1:
                names = {n for p in command.params for n in (*p.opts, *p.secondary_opts)} | {"--help"}
                flags = piece.split("/") if piece.startswith("--") else [piece]
                problems += [f"`{' '.join(path)}` has no option {f}" for f in flags if f not in names]
            elif subcommands is not None and piece[:1].islower() and piece not in subcommands:
                problems.append(f"`{' '.join(path)}` has no command {piece}")
        if subcommands is not None and len(pieces) == 1 and pieces[0] in subcommands:
            command, path = subcommands[pieces[0]], [*path, pieces[0]]
    return problems


def test_every_envlock_line_in_the_docs_names_real_commands_and_options() -> None:
    root = _command_tree()
    problems = []
    for block in BLOCKS:
        if block.language not in (*SHELL, "text"):
            continue
        for offset, arguments in _envlock_lines(block.text):
            where = f"{block.path.relative_to(ROOT)}:{block.line + 1 + offset}"
            problems += [f"{where}: {p}" for p in _option_problems(arguments, root)]
    assert problems == []


def test_every_relative_link_leads_to_a_file() -> None:
    broken = []
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not re.match(r"https?://|mailto:", target) and not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert broken == []


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A folder laid out like a checkout (the examples with their locks), `envlock` on PATH (this checkout's), and
    a home, cache and trust store of its own; no engine (a block that needs one is marked)."""
    work = tmp_path_factory.mktemp("docs")
    for example in ("digits", "torch-gpu"):
        shutil.copytree(ROOT / "examples" / example, work / "examples" / example)
    (work / "home").mkdir()
    binaries = work / ".venv" / "bin"
    binaries.mkdir(parents=True)
    (binaries / "envlock").write_text(f'#!/bin/sh\nexec {sys.executable} -m envlock "$@"\n', encoding="utf-8")
    (binaries / "envlock").chmod(0o755)
    env = {
        "PATH": f"{binaries}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT / "src"),
        "HOME": str(work / "home"),
        "ENVLOCK_CACHE_DIR": str(work / "cache"),
        "ENVLOCK_TRUST_DIR": str(work / "trust"),
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
        "LANG": "C.UTF-8",
    }
    return work, env


@pytest.mark.parametrize("block", RUN_HERE, ids=[b.where for b in RUN_HERE])
def test_the_unmarked_shell_examples_run(block: Block, sandbox: tuple[Path, dict[str, str]]) -> None:
    work, env = sandbox
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.text],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{block.where} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"


def test_the_line_check_names_a_wrong_option_and_a_wrong_command() -> None:
    root = _command_tree()
    assert _option_problems("runs [-C DIR] wait RUN [--timeout S]", root) == []
    assert _option_problems("run --outputs out -- python -x", root) == ["`envlock run` has no option --outputs"]
    assert _option_problems("trust add|lists", root) == ["`envlock trust` has no command lists"]


def test_the_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().split("\n")[-1]
    assert ci == "bash scripts/test.sh"
    assert f"```sh\n{ci}\n```" in readme

"""The command line's entry: parse, call one core function, render. Every EnvlockError becomes one red line."""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import signal
import sys
from pathlib import Path
from types import FrameType

import typer

from envlock.cli.root import CommandExited, app
from envlock.cli.wiring import Invocation, Wiring
from envlock.errors import ENVLOCK_FAILED, EXIT_CODES, INTERRUPTED, USAGE, EnvlockError
from envlock.report import shown

# The modules (under envlock.cli) whose imports register each top-level command or group: a command imports only
# its own, so typer builds one command and not all of them (start-up time: `envlock run` is on every training
# job's path). Anything else (no command, --help, --version, an unknown name) imports every module. Checked against
# what the modules register by tests/unit/test_cli.py.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "init": ("init_commands",),
    "lock": ("lock_commands",),
    "show": ("lock_commands",),
    "build": ("image_commands",),
    "archive": ("image_commands",),
    "restore": ("image_commands",),
    "base": ("image_commands",),
    "run": ("run_commands",),
    "reproduce": ("run_commands",),
    "diff": ("run_commands",),
    "lineage": ("lineage_commands",),
    "runs": ("runs_commands",),
    "push": ("publish_commands",),
    "pull": ("publish_commands",),
    "submit": ("cluster_commands",),
    "run-submitted": ("cluster_commands",),
    "export": ("cluster_commands", "export_commands", "lock_commands"),
    "gc": ("gc_commands",),
    "sbom": ("audit_commands",),
    "key": ("audit_commands",),
    "trust": ("audit_commands",),
    "attest": ("audit_commands",),
    "verify": ("audit_commands",),
    "bundle": ("audit_commands",),
    "report": ("audit_commands",),
}
ALL_COMMAND_MODULES = tuple(sorted({module for modules in COMMAND_MODULES.values() for module in modules}))


def load_commands(args: list[str]) -> tuple[str, ...]:
    """Register the commands these arguments can reach (importing a module twice is a no-op); the modules named."""
    modules = COMMAND_MODULES.get(args[0], ALL_COMMAND_MODULES) if args else ALL_COMMAND_MODULES
    for module in modules:
        importlib.import_module(f"envlock.cli.{module}")
    return modules


# Commands whose exit status is their command's: envlock's own failures there exit ENVLOCK_FAILED (125).
PASSTHROUGH = ("run", "run-submitted")


def _fail(message: str, hint: str, code: int, details: tuple[str, ...] = ()) -> int:
    # A message may quote what another machine wrote (a record's value, a key id, a member's name): escaped.
    typer.secho(f"error: {shown(message)}", err=True, fg="red")
    for line in details:
        typer.echo(f"  {shown(line)}", err=True)
    if hint:
        typer.echo(f"hint: {shown(hint)}", err=True)
    return code


def _passes_status_through(args: list[str]) -> bool:
    """`run`, `run-submitted`, `runs … wait …`: the commands whose exit status is their command's (read from the
    arguments, for the failures the parser reports before any command starts)."""
    head = args[: args.index("--")] if "--" in args else args
    return bool(head) and (head[0] in PASSTHROUGH or (head[0] == "runs" and "wait" in head[1:]))


def _own_failure(exc: EnvlockError, args: list[str]) -> int:
    """One red line, its hint, and envlock's code — or 125 where the command's own status is passed through."""
    if not _passes_status_through(args):
        return _fail(exc.message, exc.hint, exc.exit_code, exc.details)
    meaning = EXIT_CODES.get(exc.exit_code, "")
    note = f"envlock failed, not your command: exit {ENVLOCK_FAILED} (elsewhere {exc.exit_code}: {meaning})"
    return _fail(exc.message, exc.hint, ENVLOCK_FAILED, (*exc.details, note))


def _parser_exit(exc: SystemExit, args: list[str]) -> int:
    """typer's own exits: help (0), usage errors (2; 125 for a passthrough command), a silent Ctrl-C (130)."""
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if code == INTERRUPTED:
        return _fail("interrupted", "envlock writes atomically: every file is as it was before", code)
    if code == USAGE and _passes_status_through(args):  # the parser's own message is printed already
        return ENVLOCK_FAILED
    return code


def run(argv: list[str] | None = None, wiring: Wiring | None = None) -> int:
    """Run the CLI and return its exit code; the one place that turns EnvlockErrors into messages."""
    args = list(sys.argv[1:] if argv is None else argv)
    invocation = Invocation(wiring or Wiring())
    if args[:1] == ["submit"]:
        from envlock.cli.cluster_commands import split_submit  # noqa: PLC0415  (only submit's module, see above)

        args, sbatch_args, command = split_submit(args)
        invocation = Invocation(invocation.wiring, tuple(sbatch_args), tuple(command))
    load_commands(args)
    try:
        Path.cwd()  # every default path (the project `.`) is relative to it: a removed one would mislead every line
        app(args=args, obj=invocation, standalone_mode=True)  # typer reports its own usage errors and exits 2
    except CommandExited as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except SystemExit as exc:
        return _parser_exit(exc, args)
    except EnvlockError as exc:
        return _own_failure(exc, args)
    except OSError as exc:
        # A filesystem failure no code path translated (a read-only project, another user's folder, a full disk):
        # the environment's, so one line; any other OSError is a bug and keeps its traceback.
        from envlock.fsutil import environment_error  # noqa: PLC0415  (only on failure: not on every start's path)

        error = environment_error(exc, f"running `envlock {' '.join(args[:1])}`")
        if error is None:
            raise
        return _own_failure(error, args)
    except KeyboardInterrupt:
        return _fail("interrupted", "envlock writes atomically: every file is as it was before", INTERRUPTED)
    return 0


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    # What Ctrl-C would have reached: the children in envlock's process group get SIGINT (a resolver waiting on an
    # index in a worker thread, a `docker` client), then envlock stops as on Ctrl-C.
    for pid in _children_in_group():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGINT)
    raise KeyboardInterrupt


def _children_in_group() -> list[int]:
    """This process's direct children (every thread's) in its own process group (Linux /proc; none elsewhere):
    a child started in a session of its own on purpose is not Ctrl-C's to reach, nor this handler's."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                found += [int(pid) for pid in (task / "children").read_text(encoding="ascii").split()]
    group = os.getpgrp()
    in_group = []
    for pid in found:
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == group:
                in_group.append(pid)
    return in_group


def stop_on_sigterm() -> None:
    """SIGTERM (`kill`, `docker stop` of a wrapper, Slurm's scancel and time limit) stops envlock as Ctrl-C does:
    temp files removed, the container stopped, the record marked, exit 130. Python's default would end the process
    on the spot (exit 143) with all of them left behind. A handler someone else installed is kept."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def main() -> None:
    """Console-script entry point."""
    stop_on_sigterm()
    code = run()
    # Nothing is left to collect that matters at exit; skipping the final sweep of a large heap saves ~30 ms.
    gc.freeze()
    sys.exit(code)

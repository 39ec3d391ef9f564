"""The composition root builds collaborators from the parsed options: the runtime chosen reaches the launcher, in
whatever order the collaborators are asked for, and nothing chosen in one invocation leaks into the next."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from envlock.cli.wiring import Wiring
from envlock.engine.launch import Launcher
from envlock.run.records import RunStore
from tests.fakes import FakeLauncher
from tests.unit import test_cli_commands
from tests.unit.test_cli_commands import World

world = test_cli_commands.world


def _per_runtime() -> tuple[dict[str, FakeLauncher], list[str]]:
    launchers = {name: FakeLauncher(runtime_name=name) for name in ("docker", "podman", "charliecloud")}
    return launchers, []


@pytest.mark.parametrize("order", [("docker", "podman"), ("podman", "docker"), ("charliecloud", "podman", "docker")])
def test_each_runtime_gets_its_own_launcher_whatever_was_built_first(order: tuple[str, ...]) -> None:
    launchers, built = _per_runtime()

    def launcher_for(runtime: str) -> Launcher:
        built.append(runtime)
        return launchers[runtime]

    wiring = Wiring(launcher_for=launcher_for, environ={}, say=lambda _m: None)
    tools = {runtime: wiring.run_tools(wiring.choose_runtime(runtime)) for runtime in order}
    for runtime in order:  # asked in the order given: each gets its runtime's launcher, built once
        assert tools[runtime].launcher() is launchers[runtime]
        assert wiring.launcher(runtime) is launchers[runtime]
    assert built == list(order)
    assert not hasattr(wiring, "runtime"), "the root keeps no choice of runtime"


def test_choose_runtime_validates_and_keeps_nothing() -> None:
    wiring = Wiring(environ={})
    before = replace(wiring)
    assert wiring.choose_runtime("podman", "docker") == "podman"
    assert wiring.choose_runtime(None, "charliecloud") == "charliecloud"
    assert wiring == before


def test_runtime_podman_reaches_the_launcher_after_a_docker_run_on_the_same_root(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    launchers, _ = _per_runtime()
    world.wiring.launcher_ = None
    world.wiring.launcher_for = launchers.__getitem__
    assert world(capsys, "run", "-C", str(world.project), "--", "true")[0] == 0  # docker's launcher is built first
    assert world(capsys, "run", "-C", str(world.project), "--runtime", "podman", "--", "true")[0] == 0
    assert world(capsys, "run", "-C", str(world.project), "--", "true")[0] == 0  # and nothing stuck: docker again
    assert [len(launchers[name].launched) for name in ("docker", "podman", "charliecloud")] == [2, 1, 0]
    records = sorted(RunStore(world.project).all(), key=lambda r: r.started)
    runtimes = [r.runtime.name if r.runtime else None for r in records]
    assert runtimes == ["docker", "podman", "docker"]


def test_runs_group_project_reaches_its_subcommand_without_kept_state(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert world(capsys, "run", "-C", str(world.project), "--", "true")[0] == 0
    run_id = RunStore(world.project).all()[-1].run_id
    code, out, _ = world(capsys, "runs", "-C", str(world.project), "show", run_id)
    assert code == 0 and f"run       {run_id}" in out
    other = tmp_path / "elsewhere"
    other.mkdir()
    code, _, err = world(capsys, "runs", "-C", str(other), "show", run_id)  # the same root, another project
    assert code == 13 and f"error: {run_id!r} is not a run of this project" in err

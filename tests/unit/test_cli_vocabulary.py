"""The flag vocabulary: `-o/--out FILE` for the file a command writes, `--output` for a run's declared outputs only
(the old `--output FILE` spelling still works on the writing commands, with one warning line, for one release)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envlock.cli.options import print_or_write
from envlock.image.sbom import sbom_json
from envlock.lock import lockfile
from envlock.run.records import RunStore
from tests.unit import test_cli_commands
from tests.unit.test_cli_commands import World

world = test_cli_commands.world


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: --output")]


@pytest.mark.parametrize("spelling", ["-o", "--out", "--output"])
def test_sbom_writes_its_file_under_each_spelling_and_warns_only_for_the_old_one(
    world: World, capsys: pytest.CaptureFixture[str], spelling: str
) -> None:
    target = world.project / "sbom.json"
    code, out, err = world(capsys, "sbom", "-C", str(world.project), spelling, str(target))
    assert code == 0 and out == ""
    assert target.read_text() == sbom_json(lockfile.read(world.spec.lock_path), "linux/amd64")
    expected = ["warning: --output is deprecated on `envlock sbom`; use -o/--out"] if spelling == "--output" else []
    assert _warnings(err) == expected


def test_a_text_result_goes_to_stdout_or_whole_to_the_file_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert print_or_write("a\nb\n", None, None) is None
    assert capsys.readouterr().out == "a\nb\n"
    for out, old in ((tmp_path / "new.txt", None), (None, tmp_path / "old.txt")):
        written = print_or_write("a\nb\n", out, old)
        assert written == (out or old) and written is not None and written.read_text() == "a\nb\n"
        assert capsys.readouterr().out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt", "old.txt"]  # no temp file left behind


def test_every_writing_command_takes_out_and_warns_once_for_output(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world(capsys, "run", "-C", str(world.project), "--output", "out/metrics.json", "--", "true")
    run_id = RunStore(world.project).all()[-1].run_id
    assert RunStore(world.project).load(run_id).outputs, "run's --output is still a declared output"
    cases = {
        "report": ["report", run_id, "-C", str(world.project)],
        "bundle": ["bundle", run_id, "-C", str(world.project)],
        "archive": ["archive", run_id, "-C", str(world.project)],
        "export pylock": ["export", "pylock", "-C", str(world.project)],
        "key generate": ["key", "generate"],
    }
    for name, argv in cases.items():
        new, old = world.project / f"{name.replace(' ', '-')}.new", world.project / f"{name.replace(' ', '-')}.old"
        code, _, err = world(capsys, *argv, "--out", str(new))
        assert code == 0 and new.is_file() and _warnings(err) == [], (name, err)
        world.said.clear()
        code, _, err = world(capsys, *argv, "--output", str(old))
        assert code == 0 and old.is_file(), (name, err)
        assert _warnings(err) == [f"warning: --output is deprecated on `envlock {name}`; use -o/--out"]
        world.said.clear()


def test_export_k8s_takes_out_and_warns_for_output(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world(capsys, "build", "-C", str(world.project), "--push", "--registry", "registry.example:5000/team")
    target = world.project / "job.json"
    code, _, err = world(capsys, "export", "k8s", "-C", str(world.project), "--output", str(target), "--", "true")
    assert code == 0 and json.loads(target.read_text())["kind"] == "Job"
    assert _warnings(err) == ["warning: --output is deprecated on `envlock export k8s`; use -o/--out"]


def test_a_file_named_twice_or_not_at_all_is_a_usage_error(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world(capsys, "run", "-C", str(world.project), "--", "true")
    run_id = RunStore(world.project).all()[-1].run_id
    code, _, err = world(capsys, "bundle", run_id, "-C", str(world.project))
    assert code == 2 and err.splitlines()[0] == "error: missing option -o/--out FILE"
    code, _, err = world(capsys, "sbom", "-C", str(world.project), "-o", "a.json", "--output", "b.json")
    assert code == 2 and "error: -o/--out and --output (its old spelling) were both given: give one" in err.splitlines()
    assert not Path("a.json").exists() and not Path("b.json").exists()


def test_help_shows_out_and_hides_the_old_spelling(capsys: pytest.CaptureFixture[str]) -> None:
    from envlock.cli.app import run  # noqa: PLC0415

    assert run(["report", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "-o, --out" in shown and "--output" not in shown
    assert run(["run", "--help"]) == 0
    assert "-o, --output" in capsys.readouterr().out

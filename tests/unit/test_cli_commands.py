"""Every command through the one composition root, with fakes for the engine, NVML, Slurm, registry and MLflow."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from envlock.cli.app import run
from envlock.cli.image_commands import _bars
from envlock.cli.wiring import Wiring
from envlock.cluster.slurm import Slurm
from envlock.image.build import Builder
from envlock.lock.spec import Spec
from envlock.report import Progress
from envlock.run.records import RunStore
from tests.fakes import (
    FakeEngine,
    FakeLauncher,
    FakeNvml,
    FakeRegistry,
    FakeSlurm,
    FakeTracker,
    project_with_wheels,
    stores,
)

METRICS = b'{"accuracy": 0.93}\n'


@dataclass
class World:
    """A locked project, the fakes behind the wiring, and what envlock said."""

    spec: Spec
    wiring: Wiring
    engine: FakeEngine
    launcher: FakeLauncher
    registry: FakeRegistry
    slurm: FakeSlurm
    tracker: FakeTracker
    said: list[str] = field(default_factory=list)

    @property
    def project(self) -> Path:
        return self.spec.project_dir

    def __call__(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        code = run(list(argv), self.wiring)
        captured = capsys.readouterr()
        return code, captured.out, captured.err + "\n".join(self.said)


@pytest.fixture
def world(tmp_path: Path, write_project: Callable[[str], Path]) -> World:
    spec, served = project_with_wheels(tmp_path, write_project, ["alpha", "beta"])
    cache, layers, bases, _ = stores(tmp_path / "cache", served)
    engine, launcher = FakeEngine(), FakeLauncher(writes={"out/metrics.json": METRICS})
    registry, slurm, tracker = FakeRegistry(), FakeSlurm(), FakeTracker()
    said: list[str] = []

    def builder_for(_urls: Sequence[str], progress: Progress) -> Builder:
        return Builder(engine, cache, layers, bases, said.append, progress)

    wiring = Wiring(
        engine_=engine,
        launcher_=launcher,
        nvml_=FakeNvml(unavailable="NVML shared library not found"),
        slurm_=Slurm(slurm),
        builder_for=builder_for,
        tracker_for=lambda _uri: tracker,
        registry_for=lambda _address: registry,
        docker_version=lambda: "27.3.1",
        environ={},
        say=said.append,
        write=lambda _stream, _data: None,
        cache_dir=tmp_path / "cache",
    )
    return World(spec, wiring, engine, launcher, registry, slurm, tracker, said)


def _run_id(world: World) -> str:
    return RunStore(world.project).all()[-1].run_id


def test_build_then_a_no_op_then_a_push(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = world(capsys, "build", "-C", str(world.project))
    assert code == 0 and out.startswith("built demo:")
    code, out, _ = world(capsys, "build", "-C", str(world.project))
    assert code == 0 and out.startswith("already built: demo:")
    code, out, _ = world(capsys, "build", "-C", str(world.project), "--registry", "127.0.0.1:5000/team")
    assert code == 0 and "pushed 127.0.0.1:5000/team/demo@sha256:" in out
    known = json.loads((world.project / ".envlock" / "images.json").read_text())
    assert [entry["pushed"] for entry in known.values()] == [[out.split("pushed ")[1].strip()]]


def test_build_push_without_a_registry_is_a_usage_error(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = world(capsys, "build", "-C", str(world.project), "--push")
    assert code == 2 and "--push needs a registry" in err and world.engine.images == {}


def test_run_records_the_run_and_passes_the_commands_status(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, said = world(capsys, "run", "-C", str(world.project), "-o", "out/metrics.json", "--", "python", "t.py")
    assert code == 0, said
    record = RunStore(world.project).all()[-1]
    assert record.status == "finished" and record.outputs["out/metrics.json"]
    assert world.launcher.launched[-1].image_id == record.image_id and record.host is not None
    assert record.host.docker_version == "27.3.1"
    world.launcher.code = 3
    code, _, _ = world(capsys, "run", "-C", str(world.project), "--", "python", "t.py")
    assert code == 3, "the command's own status, as it is"


def test_envlocks_own_failure_in_run_exits_125_and_names_its_code(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    (world.project / "pyproject.toml").write_text('[project]\nname = "demo"\ndependencies = ["gamma"]\n')
    code, _, err = world(capsys, "run", "-C", str(world.project), "--", "true")
    assert code == 125 and "envlock.lock is stale" in err and "elsewhere 4" in err
    assert world.launcher.launched == []
    code, _, err = world(capsys, "build", "-C", str(world.project))
    assert code == 4, "other commands keep the failure's own code"


def test_runs_show_and_wait(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world(capsys, "run", "-C", str(world.project), "-o", "out/metrics.json", "--", "python", "t.py")
    run_id = _run_id(world)
    code, out, _ = world(capsys, "runs", "-C", str(world.project))
    assert code == 0 and run_id in out and "finished" in out and "local" in out
    code, out, _ = world(capsys, "runs", "-C", str(world.project), "show", run_id[:18])
    assert code == 0 and f"run       {run_id}  finished, exit 0" in out and "output    out/metrics.json" in out
    assert "host      driver none" in out
    code, out, _ = world(capsys, "runs", "show", run_id, "-C", str(world.project), "--json")
    assert code == 0 and json.loads(out)["run_id"] == run_id
    code, out, _ = world(capsys, "runs", "-C", str(world.project), "wait", run_id)
    assert code == 0 and f"run {run_id}: finished (exit 0)" in out
    code, _, err = world(capsys, "runs", "-C", str(world.project), "show", "nope")
    assert code == 13 and "is not a run of this project" in err


def test_archive_then_restore_from_it(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world(capsys, "run", "-C", str(world.project), "--", "true")
    run_id, image_id = _run_id(world), RunStore(world.project).all()[-1].image_id
    code, out, _ = world(capsys, "archive", run_id, "-C", str(world.project))
    assert code == 0 and "verified" in out
    archive = world.project / ".envlock" / "archives" / f"{image_id.removeprefix('sha256:')[:12]}.tar"
    assert archive.is_file()
    world.engine.remove(image_id)
    code, out, err = world(capsys, "restore", run_id, "-C", str(world.project), "--no-rebuild")
    assert code == 0 and f"restored {image_id} from archive {archive}" in out, err
    code, _, err = world(capsys, "restore", "nothing-like-it", "-C", str(world.project))
    assert (
        code == 2 and "error: 'nothing-like-it' is not a registry digest, a lock file or a run of this project" in err
    )


def test_reproduce_says_reproduced_then_not(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world(capsys, "run", "-C", str(world.project), "-o", "out/metrics.json", "--", "python", "t.py")
    run_id = _run_id(world)
    code, out, _ = world(capsys, "reproduce", run_id, "-C", str(world.project))
    assert code == 0 and "REPRODUCED" in out
    world.launcher.writes = {"out/metrics.json": b'{"accuracy": 0.5}\n'}
    code, out, _ = world(capsys, "reproduce", run_id, "-C", str(world.project))
    assert code == 16 and "NOT REPRODUCED" in out


def test_diff_of_two_runs_and_of_an_image_with_a_lock(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    for seed in ("1", "2"):
        world(capsys, "run", "-C", str(world.project), "--seed", seed, "--", "true")
    by_seed = {r.seed: r.run_id for r in RunStore(world.project).all()}
    first, second = by_seed[1], by_seed[2]
    code, out, _ = world(capsys, "diff", first, second, "-C", str(world.project))
    assert code == 0 and "seed: 1 -> 2" in out
    reference = RunStore(world.project).all()[-1].image_reference
    code, out, _ = world(capsys, "diff", reference, str(world.project / "envlock.lock"), "-C", str(world.project))
    assert code == 0 and out.startswith(f"image {reference} -> lock") and "no differences" in out


def test_export_k8s_needs_a_pushed_image(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = world(capsys, "export", "k8s", "-C", str(world.project), "--", "python", "t.py")
    assert code == 2 and "never pushed" in err
    world(capsys, "build", "-C", str(world.project), "--registry", "127.0.0.1:5000/team")
    code, out, _ = world(capsys, "export", "k8s", "-C", str(world.project), "--", "python", "t.py")
    job = json.loads(out)
    assert code == 0 and "@sha256:" in job["spec"]["template"]["spec"]["containers"][0]["image"]


def test_submit_queues_through_the_wired_slurm(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = world(capsys, "submit", "-C", str(world.project), "--slurm", "-p", "gpu", "--", "python", "t.py")
    assert code == 0 and "queued as Slurm job 42" in out, err
    assert [c[0] for c in world.slurm.calls] == ["scontrol", "sbatch", "scontrol"], "ping, submit held, release"
    record = RunStore(world.project).all()[-1]
    assert record.status == "queued" and record.scheduler is not None and record.scheduler.options == ("-p", "gpu")


def test_tracking_goes_to_the_wired_tracker(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, said = world(capsys, "run", "-C", str(world.project), "--mlflow", "http://127.0.0.1:5000", "--", "true")
    assert code == 0, said
    assert world.tracker.checked == 1 and world.tracker.finished[-1][1] == "FINISHED"
    world.tracker.unreachable = True
    code, _, err = world(capsys, "run", "-C", str(world.project), "--mlflow", "http://127.0.0.1:5000", "--", "true")
    assert code == 125 and "unreachable" in err and "elsewhere 18" in err


def test_passthrough_commands_give_125_for_envlocks_own_failures_even_when_parsing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = world(capsys, "run", "--no-such-option", "--", "true")
    assert code == 125 and "No such option" in err
    code, _, err = world(capsys, "runs", "-C", str(world.project), "wait", "nope")
    assert code == 125 and "elsewhere 13" in err
    code, _, err = world(capsys, "runs", "-C", str(world.project), "show", "nope")
    assert code == 13, "not a passthrough command: its own code"
    code, _, err = world(capsys, "build", "--no-such-option")
    assert code == 2


def test_download_bars_are_made_once_when_threads_report_at_once() -> None:
    bars, progress = _bars()
    with bars, ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: progress(f"wheel-{i % 4}", i, 64), range(64)))
    assert len(bars.tasks) == 4


@pytest.mark.parametrize(
    ("flag", "value"), [("-i", "data\\x"), ("--input", "../x"), ("-o", "out\\metrics.json"), ("-o", "/etc/x")]
)
def test_a_path_the_record_could_not_read_back_is_refused_before_the_run(
    world: World, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    """`run -i 'data\\x'` once ran, then `envlock runs` skipped its record as unreadable: one path rule now."""
    code, _, err = world(capsys, "run", "-C", str(world.project), flag, value, "--", "true")
    assert code == 125 and "elsewhere 2" in err and (value in err or repr(value) in err), err
    assert world.launcher.launched == [] and RunStore(world.project).scan() == ([], [])
    code, out, said = world(capsys, "runs", "-C", str(world.project))
    assert code == 0 and "no runs yet" in out + said


def test_a_plain_input_path_runs_and_its_record_reads_back(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    (world.project / "data").mkdir()
    (world.project / "data" / "x").write_text("1\n", encoding="utf-8")
    code, _, said = world(capsys, "run", "-C", str(world.project), "-i", "data/x", "--", "true")
    assert code == 0, said
    records, broken = RunStore(world.project).scan()
    assert broken == [] and len(records) == 1 and records[0].inputs is not None
    assert list(records[0].inputs.files) == ["data/x"]


def test_a_link_out_of_the_project_is_named_unless_declared(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A dataset folder linked into the project dangles in the container (it sees the project alone): a warning
    names it and how to declare it; declared, it is mounted from where it leads, and nothing is said."""
    outside = tmp_path / "datasets" / "digits"
    outside.mkdir(parents=True)
    (outside / "train.csv").write_text("x\n1\n")
    (world.project / "data").symlink_to(outside)
    (world.project / "inside").symlink_to(world.project / "out", target_is_directory=True)  # inside: fine
    (world.project / "gone").symlink_to(tmp_path / "nowhere")  # dangling here too: nothing the container misses
    code, _, said = world(capsys, "run", "-C", str(world.project), "--", "python", "t.py")
    assert code == 0, said
    warnings = [line for line in said.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: data -> {outside} leads outside the project, which is all the container sees: there it dangles "
        "(declare it, --input data or inputs = [...], to mount it read-only and hash it into the record)"
    ]
    world.said.clear()
    code, _, said = world(capsys, "run", "-C", str(world.project), "-i", "data", "--", "python", "t.py")
    assert code == 0 and "warning:" not in said, said
    assert (world.project / "data", "/work/data") in world.launcher.launched[-1].read_only  # resolved by the engine

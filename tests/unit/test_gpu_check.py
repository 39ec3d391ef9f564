"""scripts/gpu-check.sh's module (envlock.diagnostics.gpucheck) on this machine: a fake NVML for the host, a fake
training command for determinism."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from envlock.diagnostics.gpucheck import (
    Deadline,
    Training,
    arm_environment,
    compare_runs,
    determinism_section,
    gpu_check,
    main,
    summary_lines,
    torch_section,
)
from envlock.diagnostics.gpureport import GpuReport, TorchDevice, TorchInfo, TorchSection, TrainingRun, WeightsDiff
from envlock.run.hostprobe import HostState, probe_host, read_cpu_model
from tests.fakes import GIB, FakeGpu, FakeNvml

REPO = Path(__file__).resolve().parents[2]
H200 = FakeGpu("NVIDIA H200", (9, 0), memory_bytes=141 * GIB, mig=False, ecc=True, uuid="GPU-6f1c2a3b")
NO_DRIVER = "NVML shared library not found (no NVIDIA driver installed)"
TORCH_CU124 = {
    "status": "passed",
    "installed": True,
    "version": "2.5.1+cu124",
    "cuda": "12.4",
    "cuda-available": True,
    "devices": [{"name": "NVIDIA H200", "compute-capability": "9.0"}],
}


def no_torch() -> TorchSection:
    return TorchSection("skipped", TorchInfo(installed=False), reason="torch is not installed for python3")


def torch_cu124() -> TorchSection:
    return TorchSection("passed", TorchInfo.from_dict(TORCH_CU124))


def fake_training(script: str) -> Training:
    """A training command without torch: `script` runs in the output folder and writes model.pt there."""
    return Training(lambda out, deterministic: [sys.executable, "-c", script, "det" if deterministic else "free"])


# Writes what envlock's settings pin (the same bytes every time), or noise when they are absent.
SEEDED_ELSE_NOISE = """
import os, pathlib
seed = os.environ.get("ENVLOCK_SEED")
pathlib.Path("model.pt").write_bytes(seed.encode() if seed is not None else os.urandom(16))
"""
# Writes the variables it was given: identical within each arm, and shows what each arm set.
ECHO_SETTINGS = """
import os, pathlib
names = ("ENVLOCK_SEED", "PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG")
pathlib.Path("model.pt").write_text("|".join(os.environ.get(name, "-") for name in names))
"""


def check_typed(nvml: FakeNvml, torch_info: Callable[[], TorchSection] = no_torch) -> GpuReport:
    return gpu_check(nvml, REPO, torch_info, fake_training(ECHO_SETTINGS), Deadline(120))


def check(nvml: FakeNvml, torch_info: Callable[[], TorchSection] = no_torch) -> dict[str, Any]:
    """The report as its JSON file holds it."""
    return check_typed(nvml, torch_info).as_dict()


def verdicts(report: dict[str, Any]) -> list[tuple[str, str | None, str, bool]]:
    return [(c["lock"], c["variant"], c["verdict"], c["as-expected"]) for c in report["preflight"]["checks"]]


# The report's top-level keys, in the order the file (report-version 1) writes them.
REPORT_KEYS = [
    "report-version",
    "tool",
    "envlock-version",
    "created",
    "environment",
    "host",
    "torch",
    "preflight",
    "determinism",
    "ok",
    "seconds",
]


def test_report_holds_the_host_as_a_run_record() -> None:
    nvml = FakeNvml(driver="550.54.15", cuda=12040, gpus=[H200])
    report = check(nvml)
    assert set(report) == set(REPORT_KEYS)
    record = report["host"]["record"]
    expected = probe_host(FakeNvml(driver="550.54.15", cuda=12040, gpus=[H200]), lambda: None, read_cpu_model)
    assert record == expected.as_dict()
    assert HostState.from_dict(record) == expected
    assert record["gpus"] == [
        {
            "index": 0,
            "name": "NVIDIA H200",
            "uuid": "GPU-6f1c2a3b",
            "memory-mib": 144384,
            "compute-capability": "9.0",
            "mig-mode": "disabled",
            "ecc-mode": "enabled",
        }
    ]
    assert (record["driver-version"], record["cuda-driver-version"], record["docker-version"]) == (
        "550.54.15",
        "12.4",
        None,
    )
    assert report["host"]["status"] == "passed"
    assert nvml.calls == ["init", "shutdown"]
    assert json.loads(json.dumps(report)) == report


def test_h200_with_driver_550_accepts_the_lock_and_refuses_both_variants() -> None:
    report = check(FakeNvml(driver="550.54.15", cuda=12040, gpus=[H200]))
    assert verdicts(report) == [
        ("examples/digits/envlock.lock", None, "accepted", True),
        ("examples/torch-gpu/envlock.lock", None, "accepted", True),
        ("examples/torch-gpu/envlock.lock", "driver floor raised to 551.0", "refused", True),
        ("examples/torch-gpu/envlock.lock", "architectures [sm_50] only", "refused", True),
    ]
    real, driver, arch = report["preflight"]["checks"][1:]
    assert (real["problems"], real["warnings"]) == ([], [])
    assert real["cuda"]["driver-min"] == "550.54.14"
    assert real["lock-hash"].startswith("sha256:")
    assert driver["problems"] == [
        "host driver 550.54.15 is older than 551.0, the minimum for CUDA 12.4 (full compatibility), and older than "
        "551.0, the minimum for any CUDA 12.x (minor-version compatibility) (the driver supports CUDA up to 12.4)"
    ]
    assert arch["problems"] == [
        "GPU 0 (NVIDIA H200, sm_90) is not among the lock's architectures sm_50: "
        "newer than every architecture the lock was built for"
    ]
    # The refusal `envlock run` would print, with its exit code.
    assert arch["refusal"] == {
        "message": arch["problems"][0],
        "hint": "use --force to run anyway (recorded in the run record)",
        "exit-code": 12,
    }
    assert "refusal" not in real
    assert report["preflight"]["status"] == "passed"


def test_driver_535_runs_the_lock_under_minor_version_compatibility() -> None:
    report = check(FakeNvml(driver="535.104.05", cuda=12020, gpus=[H200]))
    real, driver, _arch = report["preflight"]["checks"][1:]
    assert (real["verdict"], real["as-expected"]) == ("accepted", True)
    assert real["warnings"] == [
        "host driver 535.104.05 is older than 550.54.14, the minimum for CUDA 12.4 (full compatibility); "
        "it is >= 525.60.13, so it runs under minor-version compatibility only: "
        "PTX newer than the driver will not JIT and some APIs need the full driver"
    ]
    assert (driver["variant"], driver["verdict"], driver["as-expected"]) == (
        "driver floor raised to 536.0",
        "refused",
        True,
    )
    assert "host driver 535.104.05 is older than 536.0" in driver["problems"][0]


def test_a_driver_below_the_compat_floor_fails_the_check_with_the_numbers() -> None:
    typed = check_typed(FakeNvml(driver="520.61.05", cuda=11080, gpus=[H200]))
    report = typed.as_dict()
    real = report["preflight"]["checks"][1]
    assert (real["verdict"], real["expected"], real["as-expected"]) == ("refused", "accepted", False)
    assert real["problems"] == [
        "host driver 520.61.05 is older than 550.54.14, the minimum for CUDA 12.4 (full compatibility), "
        "and older than 525.60.13, the minimum for any CUDA 12.x (minor-version compatibility) "
        "(the driver supports CUDA up to 11.8)"
    ]
    assert report["preflight"]["status"] == "failed"
    assert not report["ok"]
    assert any(line.strip().startswith("NOT refused  examples/torch-gpu") for line in summary_lines(typed))


def test_a_cpu_host_is_reported_not_an_error() -> None:
    report = check(FakeNvml(unavailable=NO_DRIVER))
    assert report["host"]["status"] == "skipped"
    assert report["host"]["reason"] == NO_DRIVER
    assert report["host"]["record"]["gpus"] == []
    # Without a GPU every CUDA stack is refused, which is what the check expects of a CPU host.
    assert [(c["verdict"], c["as-expected"]) for c in report["preflight"]["checks"]] == [
        ("accepted", True),
        ("refused", True),
        ("refused", True),
        ("refused", True),
    ]
    assert report["preflight"]["checks"][1]["problems"][0].endswith(NO_DRIVER)
    assert report["determinism"] == {"status": "skipped", "reason": "torch is not installed for python3"}
    assert not report["ok"]


def test_a_probe_failure_is_in_the_report() -> None:
    typed = check_typed(FakeNvml(gpus=[H200], broken_gpu=0))
    report = typed.as_dict()
    assert report["host"] == {
        "status": "error",
        "error": "cannot read GPU 0 from NVML: GPU is lost",
        "hint": "see `nvidia-smi` for the driver's and the GPUs' state",
    }
    assert report["preflight"] == {"status": "skipped", "reason": "the host probe failed (see host)"}
    assert summary_lines(typed)[1] == "host         [error] error: cannot read GPU 0 from NVML: GPU is lost"


def test_everything_passes_on_an_h200_with_torch() -> None:
    typed = check_typed(FakeNvml(driver="550.54.15", cuda=12040, gpus=[H200]), torch_cu124)
    report = typed.as_dict()
    assert typed.ok, json.dumps(report, indent=2)
    assert isinstance(typed.torch, TorchSection)
    assert typed.torch.info == TorchInfo(
        installed=True,
        version="2.5.1+cu124",
        cuda="12.4",
        cuda_available=True,
        devices=(TorchDevice("NVIDIA H200", "9.0"),),
    )
    assert (
        report["determinism"]["deterministic"]["sets"]["ENVLOCK_LOCK_HASH"]
        == (report["preflight"]["checks"][1]["lock-hash"])
    )
    lines = summary_lines(typed)
    assert lines[0].endswith("all passed")
    assert "NVIDIA H200 (sm_90, 144384 MiB, MIG disabled, ECC enabled)" in lines[1]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_each_arm_gets_exactly_its_settings(tmp_path: Path) -> None:
    # The caller's own values never reach either arm: the arms differ by envlock's settings alone.
    base = {"PATH": os.environ["PATH"], "PYTHONHASHSEED": "7", "CUBLAS_WORKSPACE_CONFIG": ":16:8"}
    section = determinism_section(fake_training(ECHO_SETTINGS), Deadline(60), seed=3, base_env=base).as_dict()
    with_settings, without = section["deterministic"], section["nondeterministic"]
    assert [run["sha256"] for run in with_settings["runs"]] == [sha256("3|3|:4096:8")] * 2
    assert [run["sha256"] for run in without["runs"]] == [sha256("-|-|-")] * 2
    assert with_settings["sets"] == {
        "PYTHONHASHSEED": "3",
        "ENVLOCK_SEED": "3",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        "ENVLOCK_IMAGE_ID": "native (no image)",
        "ENVLOCK_LOCK_HASH": "",
    }
    assert without["sets"] == "none of envlock's variables (nondeterministic kernels allowed)"
    assert with_settings["runs"][0]["command"][-1] == "det"
    assert without["runs"][0]["command"][-1] == "free"
    assert (with_settings["identical"], without["identical"]) == (True, True)
    assert section["status"] == "passed"
    assert "hit no nondeterministic kernel" in section["interpretation"]


def test_settings_that_make_the_difference() -> None:
    diffs: list[tuple[str, str]] = []

    def weights_diff(first: Path, second: Path) -> WeightsDiff:
        diffs.append((first.parent.name, second.parent.name))
        return WeightsDiff(tensors_equal=False)

    section = determinism_section(fake_training(SEEDED_ELSE_NOISE), Deadline(60), weights_diff=weights_diff).as_dict()
    assert (section["deterministic"]["identical"], section["nondeterministic"]["identical"]) == (True, False)
    assert section["status"] == "passed"
    assert section["interpretation"] == "envlock's settings made the difference: identical with them, different without"
    # Only the differing pair is compared tensor by tensor.
    assert diffs == [("nondeterministic-1", "nondeterministic-2")]
    assert section["nondeterministic"]["weights-diff"] == {"tensors-equal": False}
    assert all(run["exit-code"] == 0 and run["seconds"] >= 0 for run in section["deterministic"]["runs"])


def test_weights_that_differ_with_the_settings_fail() -> None:
    noise = "import os, pathlib; pathlib.Path('model.pt').write_bytes(os.urandom(16))"
    section = determinism_section(fake_training(noise), Deadline(60)).as_dict()
    assert section["deterministic"]["identical"] is False
    assert section["status"] == "failed"
    assert section["interpretation"].startswith("not reproducible even with envlock's settings")


def test_a_failing_run_is_reported_with_its_output() -> None:
    script = "import sys; print('CUDA error: no kernel image is available', file=sys.stderr); sys.exit(3)"
    section = determinism_section(fake_training(script), Deadline(60)).as_dict()
    run = section["deterministic"]["runs"][0]
    assert (run["exit-code"], run["error"]) == (3, "exited 3")
    assert "no kernel image is available" in run["output"]
    assert section["deterministic"]["identical"] is None
    assert section["status"] == "error"


def test_a_run_that_writes_no_weights() -> None:
    section = determinism_section(fake_training("pass"), Deadline(60)).as_dict()
    assert section["deterministic"]["runs"][0]["error"] == "wrote no model.pt"
    assert section["status"] == "error"


def test_a_hanging_run_is_stopped_by_its_timeout() -> None:
    section = determinism_section(fake_training("import time; time.sleep(30)"), Deadline(60), run_timeout=0.3).as_dict()
    runs = section["deterministic"]["runs"] + section["nondeterministic"]["runs"]
    assert [run["error"] for run in runs] == ["timed out after 0.3 s"] * 4
    assert all(run["seconds"] < 10 for run in runs)


def fake_clock(times: list[float]) -> Callable[[], float]:
    ticks: Iterator[float] = iter(times)
    return lambda: next(ticks)


def test_no_run_starts_once_the_budget_is_spent() -> None:
    deadline = Deadline(100, clock=fake_clock([0.0, 10.0, 20.0, 97.0, 98.0, 99.0]))
    section = determinism_section(fake_training(ECHO_SETTINGS), deadline).as_dict()
    runs = section["deterministic"]["runs"] + section["nondeterministic"]["runs"]
    assert ["sha256" in run for run in runs] == [True, True, False, False]
    assert runs[2]["error"] == "skipped: the check's time budget was spent"
    assert section["status"] == "error"


def test_compare_runs() -> None:
    a, b = TrainingRun(("t",), sha256="a"), TrainingRun(("t",), sha256="b")
    assert compare_runs([a, a]) is True
    assert compare_runs([a, b]) is False
    assert compare_runs([a, TrainingRun(("t",), error="exited 1")]) is None


def test_arm_environment_keeps_everything_else() -> None:
    env, settings = arm_environment({"PATH": "/bin", "ENVLOCK_SEED": "9"}, deterministic=False, seed=0, lock_hash="")
    assert (env, settings) == ({"PATH": "/bin"}, {})


FAKE_TORCH = """
import types
__version__ = "2.5.1+cu124"
version = types.SimpleNamespace(cuda="12.4")
backends = types.SimpleNamespace(cudnn=types.SimpleNamespace(version=lambda: 90100))
cuda = types.SimpleNamespace(
    is_available=lambda: {available},
    device_count=lambda: 1,
    get_device_name=lambda index: "NVIDIA H200",
    get_device_capability=lambda index: (9, 0),
)
"""


@pytest.fixture
def fake_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """A `torch` package on PYTHONPATH for the torch probe's subprocess."""

    def install(source: str) -> None:
        (tmp_path / "torch").mkdir(exist_ok=True)
        (tmp_path / "torch" / "__init__.py").write_text(source)
        monkeypatch.setenv("PYTHONPATH", str(tmp_path))

    return install


def test_torch_with_cuda(fake_torch: Callable[[str], None]) -> None:
    fake_torch(FAKE_TORCH.format(available=True))
    assert torch_section(sys.executable, Deadline(60)).as_dict() == {**TORCH_CU124, "cudnn": 90100}


def test_cpu_only_torch_is_skipped(fake_torch: Callable[[str], None]) -> None:
    fake_torch(FAKE_TORCH.format(available=False))
    section = torch_section(sys.executable, Deadline(60)).as_dict()
    assert section["status"] == "skipped"
    assert section["reason"] == "torch 2.5.1+cu124 sees no CUDA GPU (CPU-only)"


def test_missing_torch_is_skipped(fake_torch: Callable[[str], None]) -> None:
    fake_torch("raise ImportError('No module named torch')")
    section = torch_section(sys.executable, Deadline(60)).as_dict()
    assert (section["status"], section["reason"]) == ("skipped", f"torch is not installed for {sys.executable}")


def test_a_python_that_is_not_there() -> None:
    section = torch_section("/nonexistent/python3", Deadline(60)).as_dict()
    assert section["status"] == "error"
    assert section["error"].startswith("cannot start /nonexistent/python3")


def test_main_writes_the_report_on_this_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reports" / "gpu.json"
    args = ["--out", str(out), "--repo", str(REPO), "--python", "/nonexistent/python3"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["host"]["status"] in ("passed", "skipped")  # a CI machine may have a GPU
    assert report["torch"]["status"] == "error"
    assert report["determinism"]["status"] == "skipped"
    assert report["preflight"]["status"] == "passed"
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1] == f"report: {out}"
    assert main([*args, "--strict"]) == 1


def test_the_script_runs_from_the_checkout_without_a_traceback(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu-check.sh"), "--out", str(out), "--python", "/nonexistent/python3"],
        env={**os.environ, "PYTHON": sys.executable, "PYTHONPATH": ""},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert f"report: {out}" in done.stdout
    assert json.loads(out.read_text())["preflight"]["status"] == "passed"


def test_the_check_needs_none_of_envlocks_heavy_dependencies() -> None:
    # The hosts it is for have torch and nvidia-ml-py, but no docker-py, typer, uv or tomlkit.
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from envlock.diagnostics.gpucheck import preflight_section\n"
        "from envlock.run.hostprobe import probe_host\n"
        "preflight_section(Path(sys.argv[1]), probe_host(None, lambda: None))\n"
        "print(sorted(m for m in ('docker', 'typer', 'uv', 'tomlkit', 'requests', 'rich') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(REPO)],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_the_report_file_keeps_its_keys_in_order() -> None:
    # The JSON file is a format (report-version 1): typed sections write the keys in the order readers have seen.
    report = check(FakeNvml(driver="550.54.15", cuda=12040, gpus=[H200]), torch_cu124)
    assert list(report) == REPORT_KEYS
    assert (report["report-version"], report["tool"]) == (1, "envlock gpu-check")
    assert list(report["torch"]) == ["status", "installed", "version", "cuda", "cuda-available", "devices"]
    assert list(report["preflight"]["checks"][2]) == [
        "lock",
        "variant",
        "cuda",
        "verdict",
        "problems",
        "warnings",
        "expected",
        "as-expected",
        "refusal",
        "lock-hash",
    ]
    ran = report["determinism"]["deterministic"]["runs"][0]
    assert list(ran) == ["command", "seconds", "exit-code", "output", "sha256"]
    stopped = TrainingRun(("t",), 0.3, output="", error="timed out after 0.3 s", timed_out=True).as_dict()
    assert list(stopped) == ["command", "error", "output", "seconds"]


def test_a_lock_that_cannot_be_read_is_an_error_entry(tmp_path: Path) -> None:
    (tmp_path / "examples" / "broken").mkdir(parents=True)
    (tmp_path / "examples" / "broken" / "envlock.lock").write_text("not = [toml", encoding="utf-8")
    nvml = FakeNvml(driver="550.54.15", cuda=12040, gpus=[H200])
    typed = gpu_check(nvml, tmp_path, no_torch, fake_training(ECHO_SETTINGS), Deadline(60))
    preflight = typed.as_dict()["preflight"]
    assert preflight["status"] == "error"
    [entry] = preflight["checks"]
    assert list(entry) == ["lock", "variant", "error", "as-expected"]
    assert (entry["lock"], entry["variant"], entry["as-expected"]) == ("examples/broken/envlock.lock", None, False)
    assert summary_lines(typed)[3].startswith("preflight    [error] 0/1 verdicts as expected")

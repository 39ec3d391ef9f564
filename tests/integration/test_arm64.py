"""linux/arm64 images built on this amd64 machine: the base under qemu (once, cached), the wheel layers on the host
without emulation; the image runs under emulation, says aarch64 and imports numpy; two cold builds, one image ID."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from envlock.lock.targets import emulated
from tests.integration.example import digits_repo, git
from tests.integration.localregistry import serve_registry

pytestmark = [pytest.mark.docker, pytest.mark.network, pytest.mark.emulation]
ENVLOCK = str(Path(sys.executable).with_name("envlock"))
NAME = "envlock-test-arm64"


def envlock(*args: str, project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENVLOCK, *args[:1], "-C", str(project), *args[1:]], capture_output=True, text=True, check=False
    )


def built_id(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if "-arm64 (" in line)
    return line.split("(")[1].split(")")[0]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not emulated("linux/arm64"):
        pytest.fail("no qemu binfmt handler for aarch64: bash scripts/setup.sh installs and registers it")
    project = digits_repo(tmp_path_factory.mktemp("digits-arm64"))
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("[tool.envlock]", f'[tool.envlock]\nname = "{NAME}"'))
    git(project, "commit", "-qam", "own image name")
    yield project
    client = docker.from_env()
    for image in client.images.list(name=NAME):
        client.images.remove(image.id, force=True)


def test_an_arm64_image_runs_under_emulation_and_imports_numpy(digits: Path) -> None:
    image_id = built_id(envlock("build", "--platform", "linux/arm64", project=digits))
    client = docker.from_env()
    image = client.images.get(image_id)
    assert image.attrs["Architecture"] == "arm64" and any(tag.endswith("-arm64") for tag in image.tags)
    said = client.containers.run(
        image_id,
        ["python", "-c", "import numpy, platform; print(platform.machine(), numpy.__version__)"],
        remove=True,
    ).decode()
    assert said.split()[0] == "aarch64", said
    script = client.containers.run(image_id, ["head", "-1", "/opt/envlock/venv/bin/f2py"], remove=True).decode()
    assert script.strip() == "#!/opt/envlock/venv/bin/python", "console scripts point at the image's venv"
    known = json.loads((digits / ".envlock" / "images.json").read_text())
    entry = next(iter(known.values()))
    assert entry["platforms"]["linux/arm64"]["image-id"] == image_id
    assert entry.get("image-id") != image_id, "the host's (amd64) entry is not taken over by the arm64 image"


def test_two_cold_arm64_builds_give_one_image_id(digits: Path) -> None:
    first = built_id(envlock("build", "--platform", "linux/arm64", project=digits))
    docker.from_env().images.remove(first, force=True)
    second = built_id(envlock("build", "--platform", "linux/arm64", "--no-cache", project=digits))
    assert first == second


def test_a_pushed_two_platform_index_pulled_by_digest_gives_this_hosts_image(digits: Path, tmp_path: Path) -> None:
    with serve_registry(tmp_path / "registry") as address:
        done = envlock("build", "--platform", "all", "--registry", f"{address}/team", project=digits)
        assert done.returncode == 0, done.stderr
        index = next(line.split()[-1] for line in done.stdout.splitlines() if line.startswith("pushed index "))
        entry = next(iter(json.loads((digits / ".envlock" / "images.json").read_text()).values()))
        assert entry["index"] == index and index in entry["pushed"]
        amd64, arm64 = (entry["platforms"][p]["image-id"] for p in ("linux/amd64", "linux/arm64"))
        assert amd64 == entry["image-id"] != arm64
        client = docker.from_env()
        client.images.remove(amd64, force=True)
        pulled = client.images.pull(index)
        assert pulled.id == amd64, "the index gave this amd64 host the amd64 image, by ID"

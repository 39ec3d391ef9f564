"""[tool.envlock] validation: defaults, every problem at once with its line, did-you-mean."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from envlock.errors import SpecError
from envlock.lock.spec import load_spec


def test_defaults_come_from_project_table(sample: Callable[[str], Path]) -> None:
    spec = load_spec(sample("basic"))
    assert spec.name == "basic_project"
    assert spec.requirements == ("requests>=2", "numpy")
    assert spec.platforms == ("linux/amd64",)
    assert spec.python == "3.11"
    assert spec.base == "debian-bookworm"
    assert spec.cuda == "auto"
    assert spec.index_url == "https://pypi.org/simple"


def test_every_problem_is_reported_at_once_with_its_line(sample: Callable[[str], Path]) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(sample("typos"))
    details = "\n".join(caught.value.details)
    assert caught.value.message == "pyproject.toml has 6 problems"
    lines = [int(d.split(":")[1]) for d in caught.value.details if d.split(":")[1].isdigit()]
    assert lines == sorted(lines), "problems are listed in file order"
    assert "pyproject.toml:7: tool.envlock.platfroms: unknown key (did you mean 'platforms'?)" in details
    assert "pyproject.toml:8: tool.envlock.cuda: 'gpu' must be" in details
    assert "pyproject.toml:9: tool.envlock.base: base 'python:3.11-slim' is a movable tag" in details
    assert "pyproject.toml:4: project.dependencies: 'not a requirement!!' is not a valid requirement (" in details
    assert "pyproject.toml:11: tool.envlock.index-url:" in details
    assert "tool.envlock.python: base 'debian-bookworm' carries Python 3.11, not 3.12" in details


def test_malformed_toml_names_the_place(sample: Callable[[str], Path]) -> None:
    with pytest.raises(SpecError, match=r"is not valid TOML: .*line 3"):
        load_spec(sample("broken-toml"))


def test_missing_pyproject(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"no pyproject\.toml"):
        load_spec(tmp_path)


def test_extras_and_groups_are_merged(sample: Callable[[str], Path]) -> None:
    spec = load_spec(sample("groups"))
    assert spec.requirements == ("numpy", "matplotlib", "scikit-learn", "rich")


def test_unknown_group_and_extra_suggest(write_project: Callable[[str], Path]) -> None:
    project = write_project(
        '[project]\nname = "x"\ndependencies = ["numpy"]\n[project.optional-dependencies]\nplot = ["matplotlib"]\n'
        '[dependency-groups]\ntrain = ["rich"]\n[tool.envlock]\nextras = ["plott"]\ngroups = ["trian"]\n'
    )
    with pytest.raises(SpecError) as caught:
        load_spec(project)
    details = "\n".join(caught.value.details)
    assert "no optional-dependencies 'plott' (did you mean 'plot'?)" in details
    assert "no dependency group 'trian' (did you mean 'train'?)" in details


@pytest.mark.parametrize(
    ("envlock_table", "message"),
    [
        ('platforms = ["linux/amd46"]', "unknown platform 'linux/amd46' (did you mean 'linux/amd64'?)"),
        ("platforms = []", "needs at least one platform"),
        ('platforms = ["linux/amd64", "linux/amd64"]', "lists a platform twice"),
        ('name = "Bad Name"', "is not a valid image name"),
        ('system-packages = ["lib gomp"]', "is not a Debian package name"),
        ('registry = "http://x"', "must look like host[:port]"),
        ('requirements = ["pkg @ https://example.com/pkg.whl"]', "is a direct URL"),
        ('base = "nonsense"', "unknown base 'nonsense'"),
        ("requirements = []", "nothing to lock"),
        ('outputs = ["../secrets.txt"]', "must be a path inside the project"),
    ],
)
def test_single_field_problems(write_project: Callable[[str], Path], envlock_table: str, message: str) -> None:
    project = write_project(f'[project]\nname = "x"\ndependencies = ["numpy"]\n[tool.envlock]\n{envlock_table}\n')
    with pytest.raises(SpecError) as caught:
        load_spec(project)
    assert message in "\n".join(caught.value.details)


def test_image_base_by_digest_is_accepted(write_project: Callable[[str], Path]) -> None:
    digest = "a" * 64
    project = write_project(
        '[project]\nname = "x"\ndependencies = ["numpy"]\n'
        f'[tool.envlock]\nbase = "nvidia/cuda:12.4.1-runtime-ubuntu22.04@sha256:{digest}"\npython = "3.10"\n'
    )
    spec = load_spec(project)
    assert spec.base.endswith(digest)
    assert spec.python == "3.10"


def test_input_hash_ignores_order_formatting_and_credentials(write_project: Callable[[str], Path]) -> None:
    first = load_spec(
        write_project(
            '[project]\nname = "x"\ndependencies = ["numpy", "requests>=2"]\n'
            '[tool.envlock]\nindex-url = "https://alice:secret@pypi.example/simple"\n'
        )
    )
    second = load_spec(
        write_project(
            '# a comment\n[project]\nname = "x"\ndependencies = [\n  "requests >= 2",\n  "numpy",\n]\n'
            '[tool.envlock]\nindex-url = "https://bob:other@pypi.example/simple"\n'
        )
    )
    assert first.input_hash() == second.input_hash()
    assert "secret" not in str(first.inputs())
    third = load_spec(write_project('[project]\nname = "x"\ndependencies = ["numpy", "requests>=3"]\n'))
    assert third.input_hash() != first.input_hash()

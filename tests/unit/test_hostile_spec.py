"""pyproject.toml of any shape: a SpecError (exit 20) listing every problem, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from envlock.errors import SpecError
from envlock.lock.spec import load_spec

DEPS = '[project]\nname = "demo"\ndependencies = ["numpy"]\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tool = 5\n", "tool must be a table"),
        ("project = [1, 2]\n", "project: must be a table"),
        ('[project]\nname = "x"\ndynamic = 5\n', "nothing to lock"),
        (DEPS + 'optional-dependencies = [1]\n[tool.envlock]\nextras = ["gpu"]\n', "optional-dependencies: must be"),
        (DEPS + '[project.optional-dependencies]\ngpu = 5\n[tool.envlock]\nextras = ["gpu"]\n', "list of strings"),
        (DEPS + '[dependency-groups]\ndev = 5\n[tool.envlock]\ngroups = ["dev"]\n', "dependency-groups.dev"),
        ("dependency-groups = 5\n" + DEPS + '[tool.envlock]\ngroups = ["dev"]\n', "dependency-groups: must be a table"),
        (DEPS + '[dependency-groups]\ndev = [5, {include-group = 3}]\n[tool.envlock]\ngroups = ["dev"]\n', "5 is"),
        (DEPS + '[tool.envlock]\nindex-url = "https://pyp].org/simple"\n', "is not a URL"),
        (DEPS + '[tool.envlock]\nindex-url = "https://u:secret@host:port/simple"\n', "is not a URL"),
        (DEPS + '[tool.envlock]\nextra-index-urls = ["https:///simple"]\n', "has no host"),
        (DEPS + "[tool.envlock]\nindex-url = 5\n", "index-url: must be a string"),
        (DEPS + '[tool.envlock]\nextra-index-urls = "https://u:secret@host/simple"\n', "list of strings, not a string"),
        (DEPS + '[tool.envlock]\nindex-url = ["https://u:secret@host/simple"]\n', "string, not a list"),
        ("a = " + "[" * 600 + "]" * 600 + "\n", "nested too deeply"),
        ("a = " + "{b = " * 600 + "}" * 600 + "\n", "nested too deeply"),
        ("[" + ".".join(["a"] * 600) + "]\n", None),  # deep dotted tables parse without recursion: fine
    ],
)
def test_hostile_pyproject_is_a_spec_error(
    write_project: Callable[[str], Path], text: str, expected: str | None
) -> None:
    project = write_project(text)
    with pytest.raises(SpecError) as caught:
        load_spec(project)
    assert caught.value.exit_code == 20
    if expected is not None:
        assert expected in " ".join([caught.value.message, *caught.value.details]), caught.value.details
    assert "secret" not in " ".join([caught.value.message, *caught.value.details])


def test_every_problem_is_listed(write_project: Callable[[str], Path]) -> None:
    project = write_project(
        DEPS + 'optional-dependencies = [1]\n[dependency-groups]\ndev = 5\n[tool.envlock]\nextras = ["gpu"]\n'
        'groups = ["dev"]\nindex-url = "https://pyp].org/simple"\n'
    )
    with pytest.raises(SpecError) as caught:
        load_spec(project)
    assert len(caught.value.details) == 4, caught.value.details

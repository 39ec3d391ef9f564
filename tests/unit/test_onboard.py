"""`envlock init`: requirements files and other tools' locks → [tool.envlock], formatting kept, idempotent."""

from __future__ import annotations

import hashlib
import shutil
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from envlock.cli.app import run
from envlock.cli.wiring import Wiring
from envlock.errors import ImportSourceError, SpecError
from envlock.image.bases import BaseStore
from envlock.lock import conda
from envlock.lock.importers import from_requirements, import_file
from envlock.lock.onboard import init_project
from envlock.lock.project import lock_project
from envlock.lock.resolve import LockedPackage
from envlock.lock.shapes import debian_package_problem
from envlock.lock.spec import load_spec
from tests.fakes import FakeBaseBuilder, FakeResolver

IMPORTS = Path(__file__).parents[1] / "data" / "imports"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _envlock(project: Path) -> dict[str, object]:
    table: dict[str, object] = tomllib.loads((project / "pyproject.toml").read_text())["tool"]["envlock"]
    return table


def test_requirements_with_includes_markers_hashes_and_indexes(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text(
        "# training deps\n"
        "--index-url https://mirror.example/simple/\n"
        "--extra-index-url=https://download.pytorch.org/whl/cpu\n"
        "-r base.txt\n"
        "-c constraints.txt\n"
        "requests==2.32.3 \\\n    --hash=sha256:aaa \\\n    --hash=sha256:bbb\n"
        "numpy>=2 ; python_version >= '3.10'  # why not\n"
        "-e ./vendored\n"
    )
    (tmp_path / "base.txt").write_text("idna<4\n")
    (tmp_path / "constraints.txt").write_text("urllib3==2.2.3\n")
    imported = from_requirements(tmp_path / "requirements.txt")
    assert imported.requirements == ["idna<4", "requests==2.32.3", 'numpy>=2; python_version >= "3.10"']
    assert imported.constraints == ["urllib3==2.2.3"]
    assert imported.index_url == "https://mirror.example/simple"
    assert imported.extra_index_urls == ["https://download.pytorch.org/whl/cpu"]
    assert any("vendored" in item for item in imported.not_handled)


def test_a_requirements_include_loop_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("-r other.txt\n")
    (tmp_path / "other.txt").write_text("-r requirements.txt\n")
    with pytest.raises(ImportSourceError, match="includes itself"):
        from_requirements(tmp_path / "requirements.txt")


def test_init_on_a_requirements_only_project_creates_pyproject_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "requirements.txt").write_text("numpy==2.1.3\nscikit-learn>=1.5\n")
    (tmp_path / "checkpoints").mkdir()
    assert run(["init", "-C", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "created" in out and "+ requirements: numpy==2.1.3\n  + requirements: scikit-learn>=1.5\n" in out
    assert "checkpoints/" in out and "envlock.lock" in out
    assert _envlock(tmp_path)["requirements"] == ["numpy==2.1.3", "scikit-learn>=1.5"]
    spec = load_spec(tmp_path)
    assert spec.requirements == ("numpy==2.1.3", "scikit-learn>=1.5") and spec.name == tmp_path.name.lower()
    before = (tmp_path / "pyproject.toml").read_text()
    assert run(["init", "-C", str(tmp_path), "--gitignore"]) == 0
    out = capsys.readouterr().out
    assert "nothing changed" in out and "added to .gitignore" in out
    assert (tmp_path / "pyproject.toml").read_text() == before
    assert "checkpoints/" in (tmp_path / ".gitignore").read_text()
    assert run(["init", "-C", str(tmp_path), "--gitignore"]) == 0
    assert "gitignore" not in capsys.readouterr().out, "the lines are there now"


def test_init_keeps_the_users_formatting_and_comments(tmp_path: Path) -> None:
    text = (
        '# my project\n[project]\nname = "demo"  # the name\nversion = "1"\n\n'
        '[tool.envlock]\ncuda = "cpu"   # no GPUs here\n\n[tool.other]\nx = 1\n'
    )
    (tmp_path / "pyproject.toml").write_text(text)
    (tmp_path / "requirements.txt").write_text("idna==3.10\n")
    outcome = init_project(tmp_path)
    written = (tmp_path / "pyproject.toml").read_text()
    assert written.startswith(text.split("[tool.other]", maxsplit=1)[0].rstrip("\n"))
    assert '"cpu"   # no GPUs here' in written and "[tool.other]\nx = 1" in written
    assert outcome.changes and _envlock(tmp_path)["requirements"] == ["idna==3.10"]


def test_uv_lock_pins_become_constraints_and_the_project_itself_is_left_out(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "0.1.0"\ndependencies = ["requests>=2"]\n'
    )
    shutil.copy(IMPORTS / "uv.lock", tmp_path)
    init_project(tmp_path)
    table = _envlock(tmp_path)
    assert "requirements" not in table, "[project].dependencies stay the wishes"
    assert table["constraints"] == [
        "idna==3.10",
        "numpy==1.26.4 ; (python_full_version < '3.12')",
        "numpy==2.1.3 ; (python_full_version >= '3.12')",
        "requests==2.32.3",
    ]
    spec = load_spec(tmp_path)
    resolver = FakeResolver({"linux/amd64": [LockedPackage("requests", "2.32.3")]})
    lock_project(spec, resolver)
    assert resolver.requests[0].constraints == spec.constraints and "constraints" in spec.inputs()


def test_pylock_without_project_dependencies_pins_everything_with_markers(tmp_path: Path) -> None:
    imported = import_file(IMPORTS / "pylock.toml", {})
    assert imported.requirements == ["colorama==0.4.6 ; sys_platform == 'win32'", "idna==3.10"]
    assert imported.constraints == imported.requirements


def test_poetry_lock_main_group_is_wished_and_every_pin_constrains(tmp_path: Path) -> None:
    project = {"tool": {"poetry": {"dependencies": {"python": "^3.11", "idna": "^3.7"}}}}
    imported = import_file(IMPORTS / "poetry.lock", project)
    assert imported.requirements == ["idna>=3.7"]
    assert imported.constraints == ["idna==3.10", "pytest==8.3.4"]
    without_wishes = import_file(IMPORTS / "poetry.lock", {})
    assert without_wishes.requirements == ["idna==3.10"], "the main group only"


def test_conda_environment_pip_section_python_and_what_is_not_handled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(IMPORTS / "environment.yml", tmp_path)
    assert run(["init", "-C", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "not handled: cudatoolkit=11.8" in out and "not handled: conda-forge::ffmpeg" in out
    assert "hint:" in out
    table = _envlock(tmp_path)
    assert table["requirements"] == ["idna==3.10", "requests<3,>=2"]
    assert table["python"] == "3.11" and table["extra-index-urls"] == ["https://download.pytorch.org/whl/cpu"]


def test_conda_python_the_base_does_not_carry_is_a_note_not_a_broken_spec(tmp_path: Path) -> None:
    (tmp_path / "environment.yml").write_text("dependencies:\n  - python=3.10\n  - pip:\n    - idna\n")
    outcome = init_project(tmp_path)
    assert outcome.imported is not None and any("Python 3.10" in n for n in outcome.imported.notes)
    assert "python" not in _envlock(tmp_path)
    load_spec(tmp_path)


def test_nothing_to_import_exits_24_with_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["init", "-C", str(tmp_path)]) == 27
    err = capsys.readouterr().err
    assert "nothing to import" in err and "--from FILE" in err
    assert not (tmp_path / "pyproject.toml").exists()


def test_a_broken_requirement_line_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "reqs.txt").write_text("idna\nnot a requirement!!\n")
    assert run(["init", "-C", str(tmp_path), "--from", "reqs.txt"]) == 27
    assert "reqs.txt:2" in capsys.readouterr().err


def test_a_project_with_dependencies_and_nothing_to_import_gets_an_empty_table_once(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\ndependencies = ["idna"]\n')
    first = init_project(tmp_path)
    assert first.changes == ("+ [tool.envlock] (empty: [project] dependencies are the requirements)",)
    assert "[tool.envlock]" in (tmp_path / "pyproject.toml").read_text()
    assert init_project(tmp_path).changes == ()


# --- conda environment files ------------------------------------------------------------------------------------

CONDA = Path(__file__).parents[1] / "data" / "conda"


def test_a_hand_written_science_environment_keeps_every_package_under_its_pypi_name() -> None:
    imported = import_file(CONDA / "science.yml", {})
    assert imported.requirements == [
        "numpy==1.26.*",
        "pandas>=2.1",
        "scipy",
        "scikit-learn==1.4.*",
        "matplotlib",
        "seaborn",
        "statsmodels",
        "sympy",
        "joblib",
        "h5py",
        "tables",
        "tqdm",
        "jupyterlab",
        "ipykernel",
        "tabulate==0.9.0",
    ]
    assert imported.python == "3.11" and imported.cuda is None and imported.extra_index_urls == []
    assert imported.not_handled == [
        "conda-forge::ffmpeg (conda-only; instead: Debian ffmpeg in system-packages, or PyPI imageio-ffmpeg in "
        "requirements)"
    ]
    assert imported.notes == []


def test_a_pytorch_cuda_environment_becomes_torchs_cuda_wheels_and_pip_lines_win() -> None:
    imported = import_file(CONDA / "torch-cuda.yml", {})
    assert imported.requirements == [
        "torch==2.2.*",
        "torchvision",
        "torchaudio",
        "numpy<2",
        "pillow",
        "opencv-python",
        "scikit-image",
        "pyyaml",
        "tensorboard",
        "datasets",
        "einops",
        "tqdm",
        "cmake",
        "wandb",
        "transformers==4.40.0",  # the pip section's line replaces the conda one (pip installs last)
    ]
    assert imported.cuda == "12.1" and imported.extra_index_urls == ["https://download.pytorch.org/whl/cu121"]
    assert imported.not_handled == [
        "gxx (conda-only; instead: Debian g++ in system-packages)",
        "git (conda-only; instead: Debian git in system-packages)",
    ]


def test_an_exported_environment_drops_build_strings_and_condas_own_runtime() -> None:
    imported = import_file(CONDA / "exported.yml", {})
    assert imported.requirements == [
        "numpy==1.26.4",
        "pandas==2.2.1",
        "scipy==1.12.0",
        "scikit-learn==1.4.1.post1",
        "matplotlib==3.8.3",
        "joblib==1.3.2",
        "threadpoolctl==3.3.0",
        "python-dateutil==2.9.0",
        "pytz==2024.1",
        "six==1.16.0",
        "pillow==10.2.0",
        "kiwisolver==1.4.5",
    ]
    assert imported.python == "3.11" and imported.not_handled == []
    assert imported.notes == [
        "left out, not needed in the image: _libgcc_mutex (conda's own bookkeeping), _openmp_mutex (conda's own "
        "bookkeeping), bzip2 (the base's Python carries it), ca-certificates (the base carries CA certificates), "
        "ld_impl_linux-64 (a conda cross-compiler part), libblas (PyPI's numpy and scipy wheels bundle OpenBLAS), "
        "libgcc-ng (the base carries the C runtime), libstdcxx-ng (the base carries the C++ runtime), openssl (the "
        "base carries OpenSSL), python_abi (conda's own bookkeeping)"
    ]


def test_mixed_conda_syntax_channels_space_form_brackets_or_and_cpuonly() -> None:
    imported = import_file(CONDA / "cpu-mixed.yml", {})
    assert imported.requirements == [
        "torch<2.3,>=2.1",
        "numpy==1.26.*",
        "scipy>=1.11",
        "xgboost<2.2,>=2.0",  # xgboost=2.0|2.1 and py-xgboost: one line, both bounds
        "lightgbm",
        "msgpack",
        "networkx",
        "polars",
        "pyarrow>=15",
        "requests",
    ]
    assert imported.python == "3.10"
    assert imported.cuda == "cpu" and imported.extra_index_urls == ["https://download.pytorch.org/whl/cpu"]
    assert imported.not_handled == ["openjdk=17 (conda-only; instead: Debian default-jre-headless in system-packages)"]
    assert imported.notes == [
        "xgboost=2.0|2.1: '=2.0|2.1' (conda's 'or') is taken as >=2.0,<2.2",
        "left out, not needed in the image: r-base (an R package), hdf5 (the h5py and tables wheels bundle it)",
    ]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("", ""),
        ("=1.26", "==1.26.*"),
        ("=1.26.4", "==1.26.4"),
        ("==1.26", "==1.26"),
        ("1.26.*", "==1.26.*"),
        (">=1.2,<2", ">=1.2,<2"),
        (">=1.2.*", ">=1.2"),
        ("!=1.3", "!=1.3"),
        ("=1.0|1.2.3", ">=1.0,<=1.2.3"),
    ],
)
def test_conda_version_expressions_in_pep440(version: str, expected: str) -> None:
    assert conda.pep440(version)[0] == expected


def test_an_or_of_ranges_has_no_pep440_form_and_says_so() -> None:
    assert conda.pep440(">=1,<2|>=3") == ("", "'>=1,<2|>=3' has no PEP 440 form (no 'or'): any version is allowed")


def test_the_conda_table_lists_only_names_that_differ_and_every_conda_only_package_says_what_instead() -> None:
    table = tomllib.loads((Path(conda.__file__).parents[1] / "data" / "conda.toml").read_text())
    for name, pypi in table["pypi"].items():
        assert canonicalize_name(Requirement(pypi).name) != canonicalize_name(name) or "[" in pypi, name
    for name, instead in {**table["conda-only"], **table["conda-only-patterns"]}.items():
        assert set(instead) <= {"debian", "pypi", "why"} and instead, name
        assert not debian_package_problem(instead.get("debian", "ok")), name


def test_cudatoolkit_without_torch_is_named_with_what_pypi_offers_instead() -> None:
    translation = conda.translate(["cudatoolkit=11.8", "cupy", "numpy"])
    assert translation.requirements == ["cupy-cuda11x", "numpy"] and translation.cuda is None
    assert translation.not_handled == [
        "cudatoolkit=11.8 (conda's CUDA runtime; on PyPI the CUDA libraries are nvidia-* wheels that a framework's "
        "CUDA build depends on, e.g. tensorflow[and-cuda] or cupy-cuda12x)"
    ]


def test_init_from_a_pytorch_cuda_environment_writes_cuda_and_the_torch_index(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(CONDA / "torch-cuda.yml", tmp_path / "environment.yml")
    assert run(["init", "-C", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "not handled: gxx (conda-only; instead: Debian g++ in system-packages)" in out
    table = _envlock(tmp_path)
    assert table["cuda"] == "12.1" and table["extra-index-urls"] == ["https://download.pytorch.org/whl/cu121"]
    spec = load_spec(tmp_path)
    assert spec.cuda == "12.1" and "torch==2.2.*" in spec.requirements


# --- a later init merges ----------------------------------------------------------------------------------------


def _hand_edited(tmp_path: Path) -> str:
    """A project onboarded from requirements.txt, then edited by hand as the hint asked: a package and a comment."""
    (tmp_path / "requirements.txt").write_text("numpy==2.1.3\nscikit-learn>=1.5\n")
    init_project(tmp_path)
    text = (
        (tmp_path / "pyproject.toml")
        .read_text()
        .replace('"numpy==2.1.3",', '"numpy==2.1.3",  # the pin our results use\n    "rich",')
    )
    (tmp_path / "pyproject.toml").write_text(text.replace("[tool.envlock]\n", '[tool.envlock]\ncuda = "cpu"\n'))
    (tmp_path / "requirements.txt").write_text("numpy==2.2.0\nidna\n")
    return (tmp_path / "pyproject.toml").read_text()


def test_a_second_init_adds_and_updates_and_keeps_hand_edits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _hand_edited(tmp_path)
    assert run(["init", "-C", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (
        f"updated {tmp_path / 'pyproject.toml'} [tool.envlock] (from requirements.txt):\n"
        "  ~ requirements: numpy==2.1.3 -> numpy==2.2.0\n"
        "  + requirements: idna\n"
        f"  ~ imported-from = requirements.txt (sha256 {_sha(tmp_path / 'requirements.txt')[:12]})\n"
        "  kept requirements: rich (not in requirements.txt; --prune drops it)\n"
        "  kept requirements: scikit-learn>=1.5 (not in requirements.txt; --prune drops it)\n"
    ) in out
    text = (tmp_path / "pyproject.toml").read_text()
    assert '"numpy==2.2.0",  # the pin our results use' in text and 'cuda = "cpu"' in text
    assert _envlock(tmp_path)["requirements"] == ["numpy==2.2.0", "rich", "scikit-learn>=1.5", "idna"]
    assert run(["init", "-C", str(tmp_path)]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert (tmp_path / "pyproject.toml").read_text() == text


def test_init_dry_run_prints_the_changes_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _hand_edited(tmp_path)
    assert run(["init", "-C", str(tmp_path), "--dry-run", "--prune", "--gitignore"]) == 0
    out = capsys.readouterr().out
    assert "would update" in out and "- requirements: rich (not in requirements.txt; --prune)" in out
    assert out.rstrip().endswith("dry run: nothing written")
    assert (tmp_path / "pyproject.toml").read_text() == before and not (tmp_path / ".gitignore").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyproject.toml", "requirements.txt"]


def test_init_prune_drops_what_the_source_no_longer_names(tmp_path: Path) -> None:
    _hand_edited(tmp_path)
    outcome = init_project(tmp_path, prune=True)
    assert outcome.changes == (
        "~ requirements: numpy==2.1.3 -> numpy==2.2.0",
        "- requirements: rich (not in requirements.txt; --prune)",
        "- requirements: scikit-learn>=1.5 (not in requirements.txt; --prune)",
        "+ requirements: idna",
        f"~ imported-from = requirements.txt (sha256 {_sha(tmp_path / 'requirements.txt')[:12]})",
    )
    assert outcome.kept == () and _envlock(tmp_path)["requirements"] == ["numpy==2.2.0", "idna"]


def test_a_moved_lock_pin_replaces_its_constraint_per_marker(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\ndependencies = ["requests"]\n')
    shutil.copy(IMPORTS / "uv.lock", tmp_path)
    init_project(tmp_path)
    lock = (tmp_path / "uv.lock").read_text()
    (tmp_path / "uv.lock").write_text(lock.replace('version = "2.1.3"', 'version = "2.1.2"'))
    outcome = init_project(tmp_path)
    assert outcome.changes == (
        "~ constraints: numpy==2.1.3 ; (python_full_version >= '3.12') -> "
        "numpy==2.1.2 ; (python_full_version >= '3.12')",
        f"~ imported-from = uv.lock (sha256 {_sha(tmp_path / 'uv.lock')[:12]})",
    )


# --- lock follows the file init imported ------------------------------------------------------------------------


def _lock_cli(project: Path, resolver: FakeResolver, *args: str) -> int:
    wiring = Wiring(resolvers={"uv": resolver}, bases_=BaseStore(project / ".bases", FakeBaseBuilder(available=False)))
    return run(["lock", "-C", str(project), *args], wiring)


SOURCE_MOVES = [
    # (file, what init writes the pins into, the edit, the pin the edit makes)
    ("poetry.lock", "constraints", ('version = "3.10"', 'version = "3.9"'), "idna==3.9"),
    ("uv.lock", "constraints", ('version = "3.10"', 'version = "3.9"'), "idna==3.9"),
    ("requirements.txt", "requirements", ("idna==3.10", "idna==3.9"), "idna==3.9"),
    ("Pipfile.lock", "constraints", ('"version": "==3.10"', '"version": "==3.9"'), "idna==3.9"),
    ("pdm.lock", "constraints", ('version = "3.10"', 'version = "3.9"'), "idna==3.9"),
    ("Pipfile", "requirements", ('idna = "==3.10"', 'idna = "==3.9"'), "idna==3.9"),
]


@pytest.mark.parametrize(("name", "key", "edit", "pin"), SOURCE_MOVES)
def test_a_source_changed_after_init_makes_the_lock_stale_and_lock_takes_its_pins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, key: str, edit: tuple[str, str], pin: str
) -> None:
    if name == "requirements.txt":
        (tmp_path / name).write_text("idna==3.10\n")
    else:
        shutil.copy(IMPORTS / name, tmp_path)
        (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\ndependencies = ["idna"]\n')
    init_project(tmp_path)
    recorded = _envlock(tmp_path)["imported-from"]
    assert recorded == {"path": name, "sha256": _sha(tmp_path / name)}
    resolver = FakeResolver({"linux/amd64": [LockedPackage("idna", "3.10")]})
    assert _lock_cli(tmp_path, resolver) == 0
    assert _lock_cli(tmp_path, resolver, "--check") == 0
    capsys.readouterr()

    source = tmp_path / name
    source.write_text(source.read_text().replace(*edit))
    assert _lock_cli(tmp_path, resolver, "--check") == 4
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"error: {name} changed since it was imported: run `envlock lock`"
    assert "stale" in run_show(tmp_path, capsys)

    resolver.by_platform = {"linux/amd64": [LockedPackage("idna", "3.9")]}
    assert _lock_cli(tmp_path, resolver) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{name} changed since it was imported: re-imported into pyproject.toml\n")
    assert f"  ~ {key}: {pin.replace('3.9', '3.10')} -> {pin}\n" in out
    assert pin in (resolver.requests[-1].constraints if key == "constraints" else resolver.requests[-1].requirements)
    assert _envlock(tmp_path)["imported-from"] == {"path": name, "sha256": _sha(source)}
    assert _lock_cli(tmp_path, resolver, "--check") == 0


def run_show(project: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert run(["show", "-C", str(project)]) == 0
    return capsys.readouterr().out


def test_an_imported_source_that_is_gone_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "requirements.txt").write_text("idna==3.10\n")
    init_project(tmp_path)
    resolver = FakeResolver({"linux/amd64": [LockedPackage("idna", "3.10")]})
    assert _lock_cli(tmp_path, resolver) == 0
    (tmp_path / "requirements.txt").unlink()
    capsys.readouterr()
    assert _lock_cli(tmp_path, resolver, "--check") == 4
    assert capsys.readouterr().err.splitlines()[0] == (
        "error: requirements.txt was imported (tool.envlock.imported-from) but is gone"
    )
    assert _lock_cli(tmp_path, resolver) == 27
    assert "delete imported-from" in capsys.readouterr().err


def test_a_hand_broken_imported_from_is_a_spec_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\ndependencies = ["idna"]\n\n'
        '[tool.envlock]\nimported-from = {path = "../elsewhere.lock", sha256 = "abc"}\n'
    )
    with pytest.raises(SpecError) as raised:
        load_spec(tmp_path)
    assert raised.value.details == (
        "pyproject.toml:6: tool.envlock.imported-from.path: '../elsewhere.lock' must be a path inside the project "
        "(relative, / between names, without . or .., no \\)",
        "pyproject.toml:6: tool.envlock.imported-from.sha256: 'abc' must be 64 lowercase hex digits",
    )


def test_init_leaves_a_blank_line_before_the_next_table(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\n\n[tool.envlock]\ncuda = "cpu"\n[tool.other]\nx = 1\n'
    )
    (tmp_path / "requirements.txt").write_text("idna==3.10\n")
    init_project(tmp_path)
    text = (tmp_path / "pyproject.toml").read_text()
    sha = _sha(tmp_path / "requirements.txt")
    assert text.endswith(
        '[tool.envlock]\ncuda = "cpu"\nrequirements = ["idna==3.10"]\n'
        f'imported-from = {{path = "requirements.txt", sha256 = "{sha}"}}\n\n[tool.other]\nx = 1\n'
    )
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "requirements.txt").write_text("idna==3.10\n")
    init_project(fresh)
    assert (fresh / "pyproject.toml").read_text().endswith('"}\n'), "one newline at the end, not a blank line"


def test_editable_lines_become_local_packages_or_say_what_is_missing(tmp_path: Path) -> None:
    package = '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n[project]\nname = "{}"\n'
    (tmp_path / "pyproject.toml").write_text(package.format("demo") + 'version = "1"\ndependencies = ["idna"]\n')
    (tmp_path / "libs" / "helper").mkdir(parents=True)
    (tmp_path / "libs" / "helper" / "pyproject.toml").write_text(package.format("helper") + 'version = "2"\n')
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "setup.py").write_text("from setuptools import setup\nsetup(name='old')\n")
    (tmp_path / "requirements.txt").write_text("-e .\n-e ./libs/helper\n-e ./old\nsix\n")
    imported = from_requirements(tmp_path / "requirements.txt")
    assert imported.requirements == ["helper @ file:./libs/helper", "six"]
    assert imported.notes == [
        "requirements.txt:1: -e . is the project itself: installed from the mounted code with the metadata its "
        "build backend (hatchling.build) gives"
    ]
    assert imported.not_handled == [
        "-e ./old (requirements.txt:3: a package inside the project whose name only its build backend knows: add "
        "`NAME @ file:./old` to [tool.envlock] requirements)"
    ]
    init_project(tmp_path)
    spec = load_spec(tmp_path)
    assert [(p.name, p.path) for p in spec.local_packages] == [("demo", "."), ("helper", "libs/helper")]
    assert spec.requirements == ("six",)

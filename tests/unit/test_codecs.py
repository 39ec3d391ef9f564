"""The codec layer: every lock and record kept as test data reads and writes back to the same bytes as before the
formats were declared once; an unknown key is named with a suggestion; every problem is named in one error; one path
rule for the spec, the command line and the record."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from envlock import codecs
from envlock.codecs import Codec, Problems, project_path_problem
from envlock.errors import LockfileError, RunRecordError, SpecError
from envlock.lock import lockfile
from envlock.lock.cuda import CPU
from envlock.lock.localpackages import LocalPackage
from envlock.lock.lockfile import BaseLock, Lock, TargetBase
from envlock.lock.resolve import LockedFile, LockedPackage
from envlock.lock.spec import EnvlockKeys, parse_spec, spec_keys
from envlock.run.records import RunRecord
from tests.unit.test_lockfile import make_lock

ROOT = Path(__file__).resolve().parents[2]
RECORDS = sorted((ROOT / "tests" / "data" / "records").glob("*.json"))
LOCKS = sorted((ROOT / "examples").rglob("envlock.lock"))
# Measured with the code before the codecs (commit 158e907): the sha256 of each record as envlock writes it back
# after reading it, and each example lock's hash. A change here is a change of format.
WRITTEN = {
    "v1-local-cpu.json": "71a99721caf7a1d8e3182b117011e74f05c215f7134360638de1d8b09015b0d6",
    "v1-local-gpu-mlflow.json": "c9f293bb923aafd582ec7b514e32f4eab76f3964f0a7c79c08a4351b7761b181",
    "v1-slurm-cancelled.json": "255b29e7e4992ce342ba144991b7b14792018b58cff3de21d2f1ee0a0a81fffa",
    "v1-slurm-node0.json": "afd9d4d7ac7403eb7f6cede9bb01e110e5d2813d9310d36f503dbae445e4d69c",
    "v1-slurm-node1.json": "297f9a3b8be1e02571050649c9f3625d11cb19133049e695e7f206e4bf9f08ad",
    "v1-slurm-queued.json": "53aeeab2f94a4ef701411703edeefe393b18fefc758bc88be510e514d3caac7a",
    "v4-local-inputs.json": "2bb91a8768f3900b6d4d0109890a49cd62a019c27214c346119b03e9c3cd3f0a",
}
LOCK_HASHES = {
    "digits": "sha256:8981955de1b33267e9ada6d775402b9749ed21ff890e0957cbd4b4a27571159b",
    "torch-gpu": "sha256:54f775ca52fe13cb97f572665c88e9ca2ff75b280d826ed34300697bbdd02969",
}
MADE_LOCK = "sha256:579cbc398d347f8ef1e9a6c859d95f0c8a48821a7a9cfc38443f3b3071d4aed9"
# Made locks of every table's shape, written by the hand-kept writer before the lock tables were declared (commit
# 9e3dca2): the sha256 of the text `dumps` wrote, and the lock hash.
MADE = {
    "made": ("29613c4d4639a632c19258dc0f308e32f980a8926bf629ccb09aed707af01140", MADE_LOCK),
    "based+sdist": (
        "2626dba0a4135ce848cbef7248e920da1a1d27b2a40a2f1a5a9b0b4ecbc5c020",
        "sha256:b01d781b3890b8e4c3c002d790089d332f3933fceee780bf693b3723fd33e3af",
    ),
    "two-platforms": (
        "345f319cbf74fc97a3f6ac2ed61a1231cec1cdb2c9bc342f4ac268e970a35c89",
        "sha256:57570a23fa7818d9ced8c0bc370ad6fa3d75fae5c33945638bbb5e38751aa26e",
    ),
    "no-archs": (
        "645cc9f32c70b08aa2445c8c7e58d62ccda22470099be3e767d9b141ee81d01e",
        "sha256:885f83dc67d2510cdd42e100a17b4f0c6030bf318122b848295d3f553095beab",
    ),
    "local": (
        "d122f3ddb7bf9190c2b8e2046f4b643f4d8e95a55d96e93b65e2fe0581d74f2a",
        "sha256:a0d47685d8ee22cc29342f40680243957e67901eb57f571c011465cc589c94f6",
    ),
    "image-base": (
        "dc662423d70d1cb4b8fcb834720918bb048d410dc85ba471bff558647ae657c4",
        "sha256:f9b9144fad00cfdd9094d60d70399e294510b23365fc2518a8ac5cf136376b88",
    ),
}


def _made(name: str) -> Lock:
    """A lock with one shape: sdists (one package with an sdist only), a base with Debian packages, a CPU platform
    with no packages and no base, CUDA without known archs, local packages (static and from VCS), an image base."""
    lock = make_lock()
    target = lock.targets[0]
    upload = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    sdist = LockedFile("filelock-3.16.1.tar.gz", "https://files.example/filelock-3.16.1.tar.gz", "e" * 64, 10, upload)
    alone = LockedPackage("zzz", "1.0", (), LockedFile("zzz-1.0.tar.gz", "https://x.example/zzz-1.0.tar.gz", "f" * 64))
    packages = (*(replace(p, sdist=sdist) if p.name == "filelock" else p for p in target.packages), alone)
    debian = {"zlib1g": "1:1.2", "apt": "2.6.1"}
    based = replace(target, packages=packages, base=TargetBase("sha256:" + "a" * 64, debian))
    cpu = replace(target, platform="linux/arm64", python_platform="aarch64-manylinux_2_36", cuda=CPU, packages=())
    local = (
        LocalPackage("demo", "0.1.0", "src", ("idna>=3",), (("console_scripts", "demo", "demo:main"),)),
        LocalPackage("tool", "", ".", (), (), "setuptools.build_meta", ("setuptools==75.1.0",), "vcs"),
    )
    image = BaseLock("nvidia/cuda:12.4@sha256:" + "b" * 64, "image", "b" * 64)
    return {
        "made": lock,
        "based+sdist": replace(lock, targets=(based,)),
        "two-platforms": replace(lock, targets=(based, cpu)),
        "no-archs": replace(lock, targets=(replace(target, cuda=replace(target.cuda, archs=(), archs_source="")),)),
        "local": replace(lock, local_packages=local, system_packages=("libgomp1", "zlib1g")),
        "image-base": replace(lock, base=image),
    }[name]


def _written(record: RunRecord) -> str:
    return json.dumps(record.as_dict(), indent=2, sort_keys=True) + "\n"  # as RunStore.save writes it


def test_every_record_and_lock_kept_as_data_is_covered() -> None:
    assert sorted(path.name for path in RECORDS) == sorted(WRITTEN)
    assert sorted(path.parent.name for path in LOCKS) == sorted(LOCK_HASHES)


@pytest.mark.parametrize("path", RECORDS, ids=lambda path: path.name)
def test_a_record_round_trips_to_the_bytes_written_before(path: Path) -> None:
    record = RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    text = _written(record)
    assert hashlib.sha256(text.encode()).hexdigest() == WRITTEN[path.name]
    again = RunRecord.from_dict(json.loads(text))
    assert again == record and _written(again) == text


@pytest.mark.parametrize("path", LOCKS, ids=lambda path: path.parent.name)
def test_a_lock_round_trips_byte_for_byte_with_its_hash(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    lock = lockfile.loads(text, path)
    assert lock.lock_hash == LOCK_HASHES[path.parent.name]
    assert lockfile.dumps(lock) == text
    assert lockfile.loads(lockfile.dumps(lock)) == lock


def test_a_made_lock_keeps_its_hash_and_reads_back_equal() -> None:
    lock = make_lock()
    assert lock.lock_hash == MADE_LOCK
    assert lockfile.loads(lockfile.dumps(lock)) == lock


@pytest.mark.parametrize("name", sorted(MADE))
def test_a_made_lock_of_each_shape_is_written_as_before_and_reads_back_equal(name: str) -> None:
    lock = _made(name)
    text = lockfile.dumps(lock)
    assert (hashlib.sha256(text.encode()).hexdigest(), lock.lock_hash) == MADE[name]
    assert lockfile.loads(text) == lock and lockfile.dumps(lockfile.loads(text)) == text


def test_every_problem_of_the_lock_tables_is_named_from_their_declaration(tmp_path: Path) -> None:
    text = lockfile.dumps(_made("local")).replace('path = "src"', 'path = "../src"')
    text = text.replace('version = "12.4"', 'version = "12.5"').replace('kind = "recipe"', 'kind = "recipes"')
    text = text.replace('"linux/amd64"', '"linux/amd46"').replace('python = "3.11"', "python = 3.11")
    with pytest.raises(LockfileError) as refused:
        lockfile.loads(text, tmp_path / "envlock.lock")
    assert refused.value.details == (
        "environment.python: must be a string, not 3.11",
        'environment.base.kind: \'recipes\' must be "recipe" or "image"',
        "local-packages[0].path: '../src' is not a usable local package path (it leaves the project)",
        "targets.linux/amd46.cuda.version: is not the minor version of runtime '12.4.127'",
        "targets: unknown platform 'linux/amd46' (did you mean 'linux/amd64'?); known: linux/amd64, linux/arm64",
    )


def test_an_unknown_record_key_is_named_with_a_suggestion() -> None:
    data = json.loads(RECORDS[0].read_text(encoding="utf-8"))
    data["git"]["untracked-savd"] = {}
    with pytest.raises(RunRecordError) as refused:
        RunRecord.from_dict(data, "run record X")
    assert refused.value.message == (
        "run record X is damaged: git.untracked-savd: unknown key (did you mean 'untracked-saved'?)"
    )


def test_an_unknown_lock_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    text = lockfile.dumps(make_lock()).replace("resolver = ", "resolvr = ")
    with pytest.raises(LockfileError) as refused:
        lockfile.loads(text, tmp_path / "envlock.lock")
    assert "meta.resolvr: unknown key (did you mean 'resolver'?)" in refused.value.details
    assert "meta.resolver: missing" in refused.value.details


def test_an_unknown_spec_key_is_named_with_a_suggestion_and_its_line(tmp_path: Path) -> None:
    text = '[project]\nname = "demo"\ndependencies = ["idna"]\n\n[tool.envlock]\nplatfroms = ["linux/amd64"]\n'
    with pytest.raises(SpecError) as refused:
        parse_spec(tomllib.loads(text), tmp_path, tmp_path / "pyproject.toml", text)
    assert refused.value.details == (
        "pyproject.toml:6: tool.envlock.platfroms: unknown key (did you mean 'platforms'?)",
    )


def test_every_record_problem_is_named_in_one_error() -> None:
    data = json.loads((RECORDS[0]).read_text(encoding="utf-8"))
    data |= {"seed": "7", "gpus": "yes", "chain": "x", "links": [{"input": "a\\b"}]}
    with pytest.raises(RunRecordError) as refused:
        RunRecord.from_dict(data, "run record X")
    assert [refused.value.message, *refused.value.details] == [
        "run record X is damaged: seed: must be an integer, not '7' (and 6 more)",
        "gpus: must be true or false or null, not 'yes'",
        "links[0].input: 'a\\\\b' must be a path inside the project "
        "(relative, / between names, without . or .., no \\)",
        "links[0].sha256: missing",
        "links[0].run: missing",
        "links[0].output: missing",
        "chain: must be a string like chain-[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6} or null, not 'x'",
    ]


def test_every_lock_problem_is_named_in_one_error(tmp_path: Path) -> None:
    text = lockfile.dumps(make_lock())
    text = text.replace('python = "3.11"', 'python = "three"').replace("source-date-epoch = ", "source-date-epoch = -")
    with pytest.raises(LockfileError) as refused:
        lockfile.loads(text, tmp_path / "envlock.lock")
    assert refused.value.details == (
        "environment.python: 'three' is not a Python version like 3.11",
        "environment.source-date-epoch: "
        + text.split("source-date-epoch = ")[1].split("\n")[0]
        + " is out of range (0 to 4294967295)",
    )
    assert refused.value.message.startswith(f"{tmp_path / 'envlock.lock'} is not an envlock lock: 2 values")


def test_every_spec_problem_is_named_in_one_error(tmp_path: Path) -> None:
    text = (
        '[project]\nname = "demo"\ndependencies = ["idna"]\n\n[tool.envlock]\n'
        'inputs = ["data\\\\x"]\ncuda = "lots"\nparams = ["../p.yaml"]\n'
    )
    with pytest.raises(SpecError) as refused:
        parse_spec(tomllib.loads(text), tmp_path, tmp_path / "pyproject.toml", text)
    rule = "must be a path inside the project (relative, / between names, without . or .., no \\)"
    assert refused.value.details == (
        f"pyproject.toml:6: tool.envlock.inputs: 'data\\\\x' {rule}",
        'pyproject.toml:7: tool.envlock.cuda: \'lots\' must be "auto", "cpu" or a version like "12.4"',
        f"pyproject.toml:8: tool.envlock.params: '../p.yaml' {rule}",
    )


def test_spec_values_are_read_by_their_declaration_with_types_in_toml_words(tmp_path: Path) -> None:
    text = (
        '[project]\nname = "demo"\ndependencies = ["idna"]\n\n[tool.envlock]\nruntime = "dockr"\n'
        'untracked-max-bytes = "10"\nplatforms = "linux/amd64"\nimported-from = {path = "a.lock"}\n'
    )
    with pytest.raises(SpecError) as refused:
        parse_spec(tomllib.loads(text), tmp_path, tmp_path / "pyproject.toml", text)
    assert refused.value.details == (
        "pyproject.toml:6: tool.envlock.runtime: unknown runtime 'dockr' (did you mean 'docker'?); "
        "supported: docker, podman, charliecloud",
        "pyproject.toml:7: tool.envlock.untracked-max-bytes: must be an integer, not '10'",  # TOML has no null
        "pyproject.toml:8: tool.envlock.platforms: must be a list of strings, not 'linux/amd64'",
        "pyproject.toml:9: tool.envlock.imported-from.sha256: missing",  # inside an inline table: the table's line
    )


@pytest.mark.parametrize(
    ("path", "usable"),
    [("data/x", True), ("data\\x", False), ("/etc/x", False), ("a/../b", False), ("./a", False), ("", False)],
)
def test_one_path_rule_for_spec_command_line_and_record(path: str, usable: bool) -> None:
    assert (project_path_problem(path) is None) == usable
    record = json.loads((ROOT / "tests" / "data" / "records" / "v4-local-inputs.json").read_text(encoding="utf-8"))
    record["inputs"] = {"paths": [path], "files": {}, "digest": hashlib.sha256(b"").hexdigest(), "missing": [path]}
    if usable:
        assert RunRecord.from_dict(record).inputs is not None
    else:
        with pytest.raises(RunRecordError, match="must be a path inside the project"):
            RunRecord.from_dict(record)


def test_the_spec_declaration_lists_every_key_with_its_type_and_meaning() -> None:
    rows = spec_keys()
    assert [key for key, _, _ in rows] == list(EnvlockKeys.keys())
    assert ("inputs", "a list of strings", "files or folders each run reads (hashed before it)") in rows
    assert ("imported-from", "a table", "the lock `envlock init` imported (its hash)") in rows
    assert all(kind and doc for _, kind, doc in rows)


def test_every_declared_format_has_a_rule_for_each_type() -> None:
    def formats(cls: type[Codec]) -> list[type[Codec]]:
        return [cls, *(sub for child in cls.__subclasses__() for sub in formats(child))]

    declared = [(cls.__name__, d.key, d.type_name) for cls in formats(Codec)[1:] for d in cls.declared()]
    assert {name for name, _, _ in declared} >= {"RunRecord", "GitRecord", "HostState", "Gpu", "InputSet", "BaseLock"}
    assert ("RunRecord", "outputs", "a table of strings or nulls") in declared


def test_problems_keep_the_order_of_the_file_when_lines_are_known() -> None:
    problems = Problems("f.toml", {"b": 2, "a": 9}.get)
    problems.add("a", "late")
    problems.add("b", "early")
    problems.add("c", "nowhere")
    assert problems.items == ["f.toml: c: nowhere", "f.toml:2: b: early", "f.toml:9: a: late"]
    assert codecs.did_you_mean("outptus", ("outputs", "inputs")) == " (did you mean 'outputs'?)"

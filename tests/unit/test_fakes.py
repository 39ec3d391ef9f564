"""The fake engine and registry refuse what dockerd and a registry refuse: a fake that accepts more than the real
system would let a broken core pass its unit tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from envlock.engine.archive import write_archive
from envlock.errors import EngineError, RegistryError
from envlock.image.layers import Layer, write_layer
from envlock.image.registry import Blob, manifest_for, push
from tests.fakes import FakeEngine, FakeRegistry


def layer(tmp_path: Path, name: str, files: dict[str, str]) -> Layer:
    """A layer tar with these files, made by envlock's own layer writer."""
    root = tmp_path / name
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    return write_layer(root, tmp_path / f"{name}.tar", 0)


def config(*diff_ids: str, labels: dict[str, str] | None = None) -> bytes:
    document = {"os": "linux", "config": {"Labels": labels or {}}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    return json.dumps(document, sort_keys=True).encode()


def load(engine: FakeEngine, blob: bytes, layers: list[tuple[str, Path]]) -> str:
    return engine.load(lambda sink: write_archive(sink, blob, layers))


def test_load_refuses_a_layer_that_is_not_its_diff_id(tmp_path: Path) -> None:
    real = layer(tmp_path, "a", {"etc/a": "a"})
    claimed = "sha256:" + "0" * 64
    engine = FakeEngine()
    with pytest.raises(EngineError, match="invalid diffID for layer 0"):
        load(engine, config(claimed), [(claimed, real.tar)])
    assert engine.images == {} and engine.layers == {}


def test_upper_layers_win_and_whiteouts_delete(tmp_path: Path) -> None:
    lower = layer(tmp_path, "lower", {"etc/a": "old", "etc/b": "b", "opt/gone/c": "c"})
    upper = layer(tmp_path, "upper", {"etc/a": "new", "etc/.wh.b": "", "opt/.wh.gone": ""})
    engine = FakeEngine()
    image_id = load(
        engine, config(lower.diff_id, upper.diff_id), [(lower.diff_id, lower.tar), (upper.diff_id, upper.tar)]
    )
    assert engine.read_file(image_id, "/etc/a") == b"new"
    for deleted in ("/etc/b", "/opt/gone/c"):
        with pytest.raises(EngineError, match="Could not find the file"):
            engine.read_file(image_id, deleted)


def test_remove_drops_a_name_and_the_image_with_its_last_name(tmp_path: Path) -> None:
    only = layer(tmp_path, "a", {"etc/a": "a"})
    engine = FakeEngine()
    image_id = load(engine, config(only.diff_id), [(only.diff_id, only.tar)])
    engine.tag(image_id, "demo", "one")
    engine.tag(image_id, "demo", "two")
    engine.remove("demo:one")
    assert engine.image_id("demo:two") == image_id and engine.image_id("demo:one") is None
    engine.remove("demo:two")
    assert engine.image_id(image_id) is None, "its last name gone, the image goes"
    image_id = load(engine, config(only.diff_id), [(only.diff_id, only.tar)])
    engine.tag(image_id, "demo", "three")
    engine.remove(image_id)
    assert engine.tags == {} and engine.images == {}
    engine.remove("demo:absent")  # absent is fine
    with pytest.raises(EngineError, match="No such image"):
        engine.tag("sha256:" + "1" * 64, "demo", "four")


def test_the_registry_checks_uploads_and_the_engine_checks_what_it_pulls(tmp_path: Path) -> None:
    only = layer(tmp_path, "a", {"etc/a": "a"})
    blob = config(only.diff_id)
    registry = FakeRegistry()
    with pytest.raises(RegistryError, match="DIGEST_INVALID"):
        registry.put_blob("team/demo", Blob("sha256:" + "2" * 64, only.size, path=only.tar))
    with pytest.raises(RegistryError, match="MANIFEST_BLOB_UNKNOWN"):
        registry.put_manifest("team/demo", "v1", manifest_for(blob, [Blob(only.diff_id, only.size)]))

    pushed = push(registry, "team/demo", "v1", blob, [Blob(only.diff_id, only.size, path=only.tar)])
    assert push(registry, "team/demo", "v1", blob, [Blob(only.diff_id, only.size, path=only.tar)]) == pushed
    assert len(registry.uploads) == 2, "a second push uploads nothing the registry holds"

    engine = FakeEngine.with_registry(registry)
    ref = f"{registry.host}/{pushed}"
    image_id = "sha256:" + hashlib.sha256(blob).hexdigest()
    assert engine.pull(ref) == engine.pull(f"{registry.host}/team/demo:v1") == image_id
    assert engine.image_id(ref) == engine.image_id(f"{registry.host}/team/demo:v1") == image_id
    with pytest.raises(EngineError, match="manifest unknown"):
        engine.pull(f"{registry.host}/team/demo@sha256:" + "3" * 64)
    registry.blobs[("team/demo", only.diff_id)] = b"rotten"
    with pytest.raises(EngineError, match="unknown or corrupt"):
        FakeEngine.with_registry(registry).pull(ref)

"""Fakes at envlock's boundaries (resolver, engine, base builder), written once, used by unit tests."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from envlock.lock.resolve import LockedFile, LockedPackage, ResolveRequest


def wheel(name: str, version: str, tag: str = "py3-none-any", day: int = 1) -> LockedFile:
    """A plausible wheel file entry; its sha256 is derived from its name so it is stable."""
    filename = f"{name.replace('-', '_')}-{version}-{tag}.whl"
    return LockedFile(
        name=filename,
        url=f"https://files.example/{filename}",
        sha256=hashlib.sha256(filename.encode()).hexdigest(),
        size=1000 + len(filename),
        upload_time=datetime(2024, 10, day, 12, 0, 0, tzinfo=UTC),
    )


def package(name: str, version: str, tag: str = "py3-none-any", day: int = 1) -> LockedPackage:
    return LockedPackage(name=name, version=version, wheels=(wheel(name, version, tag, day),))


TORCH_251_AMD64 = [
    package("torch", "2.5.1", "cp311-cp311-manylinux1_x86_64", day=29),
    package("nvidia-cuda-runtime-cu12", "12.4.127", "py3-none-manylinux2014_x86_64"),
    package("nvidia-cudnn-cu12", "9.1.0.70", "py3-none-manylinux2014_x86_64"),
    package("nvidia-nccl-cu12", "2.21.5", "py3-none-manylinux2014_x86_64"),
    package("nvidia-cublas-cu12", "12.4.5.8", "py3-none-manylinux2014_x86_64"),
    package("triton", "3.1.0", "cp311-cp311-manylinux_2_17_x86_64"),
    package("filelock", "3.16.1"),
]


@dataclass
class FakeResolver:
    """Answers from a table of platform → packages; records every request it was given."""

    by_platform: dict[str, list[LockedPackage]]
    name: str = "fake"
    requests: list[ResolveRequest] = field(default_factory=list)
    error: Exception | None = None

    def version(self) -> str:
        return "fake 1.0"

    def resolve(self, request: ResolveRequest) -> list[LockedPackage]:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return sorted(self.by_platform[request.target.platform], key=lambda p: p.name)


@dataclass
class FakeEngine:
    """An engine that keeps images in a dict; `load` reads the docker-archive's config to compute the ID."""

    images: dict[str, dict[str, object]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    fail_load: BaseException | None = None
    loads: int = 0

    def image_id(self, ref: str) -> str | None:
        if ref in self.images:
            return ref
        return self.tags.get(ref)

    def image_labels(self, ref: str) -> dict[str, str]:
        image_id = self.image_id(ref)
        return dict(self.images[image_id]["labels"]) if image_id else {}  # type: ignore[call-overload]

    def load(self, write: Any) -> str:
        self.loads += 1
        if self.fail_load is not None:
            raise self.fail_load
        buffer = io.BytesIO()
        write(buffer)
        buffer.seek(0)
        with tarfile.open(fileobj=buffer) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            config = tar.extractfile(manifest[0]["Config"]).read()  # type: ignore[union-attr]
            layers = manifest[0]["Layers"]
            assert all(tar.getmember(layer) for layer in layers)
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        self.images[image_id] = {"labels": json.loads(config)["config"]["Labels"], "layers": layers}
        return image_id

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        self.tags[f"{repository}:{tag}"] = image_id

    def remove(self, ref: str) -> None:
        self.tags.pop(ref, None)
        self.images.pop(ref, None)

    def pull(self, ref: str) -> str:
        raise NotImplementedError("the fake engine has no registry")

    def read_file(self, ref: str, path: str) -> bytes:
        raise NotImplementedError("the fake engine keeps no files")

    def save(self, ref: str, out: Path) -> None:
        raise NotImplementedError("the fake engine keeps no layers")


class FakeBaseBuilder:
    """Writes a tiny root filesystem with a dpkg status file instead of running mmdebstrap."""

    def __init__(self, available: bool = True) -> None:
        self.builds = 0
        self.recipes: list[Any] = []
        self.python_version = "3.11.2-1+b1"
        self.can_build = available

    def available(self) -> bool:
        return self.can_build

    def build(self, recipe: Any, platform: str, out: Path) -> None:
        self.builds += 1
        self.recipes.append(recipe)
        status = f"Package: python3\nStatus: install ok installed\nVersion: {self.python_version}\n\n".encode()
        with tarfile.open(out, "w") as tar:
            info = tarfile.TarInfo("var/lib/dpkg/status")
            info.size = len(status)
            tar.addfile(info, io.BytesIO(status))

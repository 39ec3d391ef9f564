"""The SBOM of a lock's image: CycloneDX 1.6 JSON, from the lock alone, the same bytes for the same lock.

Every Python package (purl pkg:pypi, the sha256 of each locked file), every Debian package of the base (purl
pkg:deb/debian), the CUDA stack (runtime, cuDNN, NCCL, cuBLAS, driver floor) and the base itself. Nothing varies
between two runs on the same lock: the serial number is derived from the lock hash, the timestamp is the lock's
source-date-epoch, and every bom-ref is named (cyclonedx-python-lib would otherwise draw random UUIDs).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from envlock import __version__
from envlock.lock.cuda import CudaStack
from envlock.lock.lockfile import Lock, TargetLock

SBOM_PATH = "etc/envlock/sbom.cdx.json"
MEDIA_TYPE = "application/vnd.cyclonedx+json"
# The namespace of envlock's SBOM serial numbers: uuid5(namespace, lock hash + platform).
_SERIAL_NAMESPACE = uuid.UUID("6b1f4a9e-2f43-5c8e-9a57-0e6d1b0c1e11")


def serial_number(lock: Lock, platform: str) -> uuid.UUID:
    """A stable serial number: the same lock and platform always name the same BOM."""
    return uuid.uuid5(_SERIAL_NAMESPACE, f"{lock.lock_hash}|{platform}")


def sbom_json(lock: Lock, platform: str) -> str:
    """The CycloneDX 1.6 JSON of one platform of the lock (deterministic bytes)."""
    return serialize(build_bom(lock, platform))


def build_bom(lock: Lock, platform: str) -> Any:
    """The cyclonedx-python-lib Bom for one platform of the lock."""
    # Imported here: the SBOM library is only needed when an SBOM is made (build, `envlock sbom`), not at start-up.
    from cyclonedx.model.bom import Bom, BomMetaData  # noqa: PLC0415

    target = lock.target(platform)
    components: list[Any] = [
        _base_component(lock, target),
        *_debian_components(target),
        *_python_components(target),
        *_cuda_components(target.cuda),
    ]
    image = _image_component(lock, platform, target.cuda)
    metadata = BomMetaData(
        component=image, timestamp=datetime.fromtimestamp(lock.source_date_epoch, UTC), tools=_tool_repository()
    )
    bom = Bom(components=components, metadata=metadata, serial_number=serial_number(lock, platform))
    bom.register_dependency(image, components)
    return bom


def _base_component(lock: Lock, target: TargetLock) -> Any:
    """The base the image starts from: an image or a recipe (an operating system), by its sha256."""
    from cyclonedx.model import HashAlgorithm, HashType, Property  # noqa: PLC0415
    from cyclonedx.model.bom_ref import BomRef  # noqa: PLC0415
    from cyclonedx.model.component import Component, ComponentType  # noqa: PLC0415

    return Component(
        name=lock.base.name,
        version=(target.base.id if target.base else lock.base.sha256),
        type=ComponentType.CONTAINER if lock.base.kind == "image" else ComponentType.OPERATING_SYSTEM,
        bom_ref=BomRef(f"envlock-base:{lock.base.name}"),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=lock.base.sha256.removeprefix("sha256:"))]
        if lock.base.sha256
        else [],
        properties=[
            Property(name="envlock:base:kind", value=lock.base.kind),
            Property(name="envlock:base:id", value=target.base.id if target.base else "not pinned"),
            *(
                [Property(name="envlock:system-packages", value=" ".join(lock.system_packages))]
                if lock.system_packages
                else []
            ),
        ],
    )


def _debian_components(target: TargetLock) -> list[Any]:
    """Every Debian package of the pinned base, by name (pkg:deb/debian purls)."""
    from cyclonedx.model import Property  # noqa: PLC0415
    from cyclonedx.model.bom_ref import BomRef  # noqa: PLC0415
    from cyclonedx.model.component import Component, ComponentType  # noqa: PLC0415
    from packageurl import PackageURL  # noqa: PLC0415

    components: list[Any] = []
    for name, version in sorted((target.base.debian if target.base else {}).items()):
        purl = PackageURL(type="deb", namespace="debian", name=name, version=version)
        components.append(
            Component(
                name=name,
                version=version,
                type=ComponentType.LIBRARY,
                purl=purl,
                bom_ref=BomRef(str(purl)),
                properties=[Property(name="envlock:layer", value="base")],
            )
        )
    return components


def _python_components(target: TargetLock) -> list[Any]:
    """Every locked Python package (pkg:pypi purls), with the sha256 of each of its files."""
    from cyclonedx.model import HashAlgorithm, HashType, Property  # noqa: PLC0415
    from cyclonedx.model.bom_ref import BomRef  # noqa: PLC0415
    from cyclonedx.model.component import Component, ComponentType  # noqa: PLC0415
    from packageurl import PackageURL  # noqa: PLC0415

    components: list[Any] = []
    for package in target.packages:
        purl = PackageURL(type="pypi", name=package.name, version=package.version)
        components.append(
            Component(
                name=package.name,
                version=package.version,
                type=ComponentType.LIBRARY,
                purl=purl,
                bom_ref=BomRef(str(purl)),
                hashes=[HashType(alg=HashAlgorithm.SHA_256, content=f.sha256) for f in package.files],
                properties=[Property(name="envlock:file", value=f"{f.name} sha256:{f.sha256}") for f in package.files],
            )
        )
    return components


def _cuda_components(cuda: CudaStack) -> list[Any]:
    """The CUDA stack (runtime, cuDNN, NCCL, cuBLAS) and the driver floor; nothing for a CPU lock."""
    from cyclonedx.model import Property  # noqa: PLC0415
    from cyclonedx.model.bom_ref import BomRef  # noqa: PLC0415
    from cyclonedx.model.component import Component, ComponentType  # noqa: PLC0415

    if cuda.kind != "cuda":
        return []
    parts = (
        ("runtime", "cuda-runtime", cuda.runtime),
        ("cudnn", "cudnn", cuda.cudnn),
        ("nccl", "nccl", cuda.nccl),
        ("cublas", "cublas", cuda.cublas),
    )
    components: list[Any] = [
        Component(
            name=name,
            version=version,
            type=ComponentType.LIBRARY,
            group="nvidia",
            bom_ref=BomRef(f"envlock-cuda:{key}"),
            properties=[
                Property(name="envlock:cuda:part", value=key),
                Property(name="envlock:cuda:source", value=cuda.source),
            ],
        )
        for key, name, version in parts
    ]
    components.append(
        Component(
            name="nvidia-driver",
            version=f">={cuda.driver_min}",
            type=ComponentType.PLATFORM,
            group="nvidia",
            bom_ref=BomRef("envlock-cuda:driver"),
            properties=[
                Property(name="envlock:cuda:driver-min", value=cuda.driver_min),
                Property(name="envlock:cuda:driver-min-compat", value=cuda.driver_min_compat),
                Property(name="envlock:cuda:archs", value=" ".join(cuda.archs) or "unknown"),
            ],
        )
    )
    return components


def _image_component(lock: Lock, platform: str, cuda: CudaStack) -> Any:
    """The image the BOM describes: named by the lock hash, for one platform."""
    from cyclonedx.model import Property  # noqa: PLC0415
    from cyclonedx.model.bom_ref import BomRef  # noqa: PLC0415
    from cyclonedx.model.component import Component, ComponentType  # noqa: PLC0415

    return Component(
        name=f"envlock-image:{lock.short_hash}",
        version=lock.lock_hash,
        type=ComponentType.CONTAINER,
        bom_ref=BomRef(f"envlock-image:{lock.lock_hash}"),
        properties=[
            Property(name="envlock:lock-hash", value=lock.lock_hash),
            Property(name="envlock:platform", value=platform),
            Property(name="envlock:python", value=lock.python),
            Property(name="envlock:cuda", value=cuda.version if cuda.kind == "cuda" else "cpu"),
        ],
    )


def _tool_repository() -> Any:
    """The tool that made the BOM: envlock, at its version."""
    from cyclonedx.model.bom_ref import BomRef  # noqa: PLC0415
    from cyclonedx.model.component import Component, ComponentType  # noqa: PLC0415
    from cyclonedx.model.tool import ToolRepository  # noqa: PLC0415

    return ToolRepository(
        components=[
            Component(
                name="envlock", version=__version__, type=ComponentType.APPLICATION, bom_ref=BomRef("envlock-tool")
            )
        ]
    )


def serialize(bom: Any) -> str:
    """CycloneDX 1.6 JSON, keys sorted (the library's own order is stable, sorting makes it obviously so)."""
    import json  # noqa: PLC0415

    from cyclonedx.output.json import JsonV1Dot6  # noqa: PLC0415

    text = JsonV1Dot6(bom).output_as_string()
    return json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"

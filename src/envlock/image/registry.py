"""Push an image's own blobs through the Registry HTTP API v2, so its digest is the same from any machine.

Layers are pushed uncompressed (`application/vnd.oci.image.layer.v1.tar`): each blob's digest is its diff_id,
and the manifest is canonical JSON, so the manifest digest depends on the image alone — not on a machine's gzip.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from envlock.engine.archive import sha256_digest
from envlock.engine.runtimes import LayerFile
from envlock.errors import RegistryError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
# Sites name registries that speak plain HTTP (or self-signed TLS) here, as registries.conf's `insecure = true`:
# host[:port], separated by commas or spaces. Everywhere else TLS is verified.
INSECURE_REGISTRIES_ENV = "ENVLOCK_INSECURE_REGISTRIES"
# A registry that does not even accept the connection in this time is unreachable: a node without a route to it
# fails in seconds, not after the full read timeout.
CONNECT_TIMEOUT_S = 10.0
CHUNK_BYTES = 1 << 20  # a streamed blob is read, hashed and written this much at a time


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob: its digest, size and where its bytes are."""

    digest: str
    size: int
    path: Path | None = None
    data: bytes | None = None


def manifest_for(config: bytes, layers: list[Blob]) -> bytes:
    """The canonical OCI manifest for a config and uncompressed layers."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": b.digest, "size": b.size} for b in layers],
    }
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def split_target(target: str) -> tuple[str, str]:
    """`127.0.0.1:5000/team` + image name → (registry host, repository path prefix)."""
    host, _, namespace = target.partition("/")
    if not re.match(r"^[A-Za-z0-9.-]+(:\d+)?$", host):
        raise RegistryError(f"{target!r} is not a registry address", hint="write it as host[:port][/namespace]")
    return host, namespace


class Registry(Protocol):
    """The parts of the distribution API a push needs."""

    def has_blob(self, repository: str, digest: str) -> bool:
        """True when the registry already holds the blob."""
        ...

    def put_blob(self, repository: str, blob: Blob) -> None:
        """Upload a blob (monolithic upload), checked by the registry against its digest."""
        ...

    def put_manifest(self, repository: str, reference: str, manifest: bytes, media_type: str = OCI_MANIFEST) -> str:
        """Store the manifest under a tag (or its digest); returns the digest the registry reports."""
        ...

    def manifest(self, repository: str, reference: str) -> bytes | None:
        """A manifest's exact bytes by tag or digest; None when the registry has none."""
        ...

    def blob(self, repository: str, digest: str) -> bytes | None:
        """A blob's bytes; None when the registry has none."""
        ...

    def referrers(self, repository: str, digest: str) -> bytes | None:
        """The OCI 1.1 referrers API's index for a manifest; None when the registry has no such API."""
        ...

    def tags(self, repository: str) -> list[str]:
        """The repository's tags (empty when the registry has no such repository)."""
        ...

    def blob_into(self, repository: str, digest: str, out: Path, size: int | None = None) -> bool:
        """Stream a blob into a file (see write_blob): checked against its digest and, given `size` (what its
        manifest declares), cut off past it; RegistryError if either fails, no file left. False when absent."""
        ...


class HttpRegistry:
    """Registry over HTTP(S) with requests; basic or bearer-token auth from the user's Docker config."""

    def __init__(self, host: str, insecure: bool | None = None, timeout: float = 60.0) -> None:
        import requests  # noqa: PLC0415

        self.host = host
        loopback = host.split(":", maxsplit=1)[0] in ("localhost", "127.0.0.1", "::1")
        plain = loopback if insecure is None else insecure  # Docker, too, speaks plain HTTP to loopback only
        self.base = f"{'http' if plain else 'https'}://{host}"
        self.session = requests.Session()
        self.timeout = timeout
        self._credentials = _docker_credentials(host)

    def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        import requests  # noqa: PLC0415

        try:
            timeout = (min(CONNECT_TIMEOUT_S, self.timeout), self.timeout)
            response = self.session.request(method, url, timeout=timeout, **kwargs)
            if response.status_code == 401 and self._credentials:
                self._authenticate(response)
                if "data" in kwargs and hasattr(kwargs["data"], "seek"):
                    kwargs["data"].seek(0)
                response = self.session.request(method, url, timeout=timeout, **kwargs)
        except requests.RequestException as exc:
            raise RegistryError(f"cannot reach the registry {self.host}: {exc.__class__.__name__}") from exc
        return response

    def _authenticate(self, challenge: Any) -> None:
        header = challenge.headers.get("WWW-Authenticate", "")
        user, password = self._credentials or ("", "")
        if header.lower().startswith("basic"):
            self.session.auth = (user, password)
            return
        params = dict(re.findall(r'(\w+)="([^"]*)"', header))
        token = self.session.get(
            params.get("realm", ""),
            params={k: v for k, v in params.items() if k in ("service", "scope")},
            auth=(user, password),
            timeout=self.timeout,
        )
        if token.status_code != 200:
            raise RegistryError(f"the registry {self.host} refused the credentials from your Docker config")
        body = token.json()
        self.session.headers["Authorization"] = f"Bearer {body.get('token') or body.get('access_token')}"

    def has_blob(self, repository: str, digest: str) -> bool:
        """HEAD the blob."""
        response = self._request("HEAD", f"{self.base}/v2/{repository}/blobs/{digest}")
        return bool(response.status_code == 200)

    def put_blob(self, repository: str, blob: Blob) -> None:
        """POST an upload session, then PUT the bytes with their digest."""
        started = self._request("POST", f"{self.base}/v2/{repository}/blobs/uploads/")
        if started.status_code != 202:
            raise self._refused(started, f"start an upload to {repository}")
        location = started.headers.get("Location")
        if not location:
            raise RegistryError(
                f"the registry {self.host} started an upload to {repository} but named no upload location",
                hint="the registry does not speak the distribution API (a proxy in between?); check its address",
            )
        if location.startswith("/"):
            location = self.base + location
        separator = "&" if "?" in location else "?"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
        if blob.path is not None:
            with blob.path.open("rb") as body:
                done = self._request("PUT", f"{location}{separator}digest={blob.digest}", data=body, headers=headers)
        else:
            done = self._request("PUT", f"{location}{separator}digest={blob.digest}", data=blob.data, headers=headers)
        if done.status_code != 201:
            raise self._refused(done, f"upload {blob.digest[:19]} to {repository}")

    def put_manifest(self, repository: str, reference: str, manifest: bytes, media_type: str = OCI_MANIFEST) -> str:
        """PUT the manifest's exact bytes."""
        done = self._request(
            "PUT",
            f"{self.base}/v2/{repository}/manifests/{reference}",
            data=manifest,
            headers={"Content-Type": media_type},
        )
        if done.status_code != 201:
            raise self._refused(done, f"store the manifest of {repository}:{reference}")
        return str(done.headers.get("Docker-Content-Digest") or sha256_digest(manifest))

    def manifest(self, repository: str, reference: str) -> bytes | None:
        """GET a manifest (OCI manifest or index) by tag or digest."""
        response = self._request(
            "GET",
            f"{self.base}/v2/{repository}/manifests/{reference}",
            headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_LIST}"},
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._refused(response, f"give the manifest {repository}:{reference}")
        return bytes(response.content)

    def blob(self, repository: str, digest: str) -> bytes | None:
        """GET a blob (following the registry's redirect)."""
        response = self._request("GET", f"{self.base}/v2/{repository}/blobs/{digest}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._refused(response, f"give the blob {digest[:19]} of {repository}")
        return bytes(response.content)

    def blob_into(self, repository: str, digest: str, out: Path, size: int | None = None) -> bool:
        """GET a blob streamed into `out` (a layer may be gigabytes) through write_blob: hashed on the way, cut off
        past `size`; a blob that is not its digest is removed and refused."""
        import requests  # noqa: PLC0415

        response = self._request("GET", f"{self.base}/v2/{repository}/blobs/{digest}", stream=True)
        with response:
            if response.status_code == 404:
                return False
            if response.status_code != 200:
                raise self._refused(response, f"give the blob {digest[:19]} of {repository}")
            try:
                write_blob(response.iter_content(CHUNK_BYTES), digest, out, host=self.host, size=size)
            except OSError as exc:
                raise RegistryError(f"cannot fetch the blob {digest[:19]} of {repository}: {exc}") from exc
            except requests.RequestException as exc:  # the connection dropped mid-blob
                raise RegistryError(
                    f"the registry {self.host} broke off the blob {digest[:19]}: {exc.__class__.__name__}"
                ) from exc
        return True

    def referrers(self, repository: str, digest: str) -> bytes | None:
        """GET /v2/<repository>/referrers/<digest>: None where the registry lacks the API (distribution 2.8)."""
        response = self._request("GET", f"{self.base}/v2/{repository}/referrers/{digest}")
        if response.status_code != 200 or OCI_INDEX not in response.headers.get("Content-Type", ""):
            return None
        return bytes(response.content)

    def tags(self, repository: str) -> list[str]:
        """GET /v2/<repository>/tags/list, following the registry's `Link` pages."""
        found: list[str] = []
        url: str | None = f"{self.base}/v2/{repository}/tags/list?n=1000"
        while url:
            response = self._request("GET", url)
            if response.status_code == 404:
                return found
            if response.status_code != 200:
                raise self._refused(response, f"list the tags of {repository}")
            try:
                listed = response.json().get("tags") or []
            except ValueError as exc:
                raise RegistryError(f"the registry {self.host} listed the tags of {repository} in no JSON") from exc
            found += [str(tag) for tag in listed if isinstance(tag, str)]
            following = re.match(r"<([^>]+)>", response.headers.get("Link", ""))
            url = (self.base + following.group(1)) if following and following.group(1).startswith("/") else None
        return found

    def _refused(self, response: Any, action: str) -> RegistryError:
        detail = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        return RegistryError(f"the registry {self.host} would not {action}: HTTP {response.status_code} {detail}")


def write_blob(chunks: Iterable[bytes], digest: str, out: Path, *, host: str, size: int | None = None) -> int:
    """A blob's chunks, as they arrive, into the file `out` (never through a link), hashed on the way: more bytes
    than `size` (the size its manifest declares) stop the download there, and bytes that are not `digest` are
    refused. On any failure (those two, a full disk, a dropped connection, Ctrl-C) no file is left. Returns the
    bytes written."""
    hashed = hashlib.sha256()
    written = 0
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            for chunk in chunks:
                written += len(chunk)
                if size is not None and written > size:
                    raise RegistryError(
                        f"refused: the registry {host} sent more than the {size} bytes declared for {digest[:19]}",
                        hint="the registry (or something on the way) serves other bytes than its manifest says: "
                        "do not trust this source",
                    )
                hashed.update(chunk)
                handle.write(chunk)
        if "sha256:" + hashed.hexdigest() != digest:
            raise RegistryError(f"the registry {host} gave a blob that is not {digest[:19]}: refused")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return written


def _docker_credentials(host: str) -> tuple[str, str] | None:
    """Username and password for host from ~/.docker/config.json (and its credential helpers); never stored."""
    import docker.auth  # noqa: PLC0415
    import docker.errors  # noqa: PLC0415

    try:
        found = docker.auth.load_config().resolve_authconfig(host)
    except docker.errors.DockerException:
        return None
    if not found or not found.get("Username"):
        return None
    return str(found["Username"]), str(found.get("Password", ""))


def push(registry: Registry, repository: str, tag: str, config: bytes, layers: list[Blob]) -> str:
    """Push the blobs the registry lacks, then the manifest; returns `repository@sha256:…`."""
    for blob in [Blob(sha256_digest(config), len(config), data=config), *layers]:
        if not registry.has_blob(repository, blob.digest):
            registry.put_blob(repository, blob)
    manifest = manifest_for(config, layers)
    digest = registry.put_manifest(repository, tag, manifest)
    if digest != sha256_digest(manifest):
        raise RegistryError(
            f"the registry reports digest {digest} for a manifest whose digest is {sha256_digest(manifest)}"
        )
    return f"{repository}@{digest}"


@dataclass(frozen=True)
class PlatformManifest:
    """One platform's pushed manifest, as an image index lists it."""

    platform: str  # "linux/arm64"
    digest: str
    size: int


def index_for(manifests: list[PlatformManifest]) -> bytes:
    """The canonical OCI image index over per-platform manifests (sorted by platform: the same bytes anywhere)."""
    entries = [
        {
            "mediaType": OCI_MANIFEST,
            "digest": m.digest,
            "size": m.size,
            "platform": {"os": m.platform.split("/")[0], "architecture": m.platform.split("/")[1]},
        }
        for m in sorted(manifests, key=lambda m: m.platform)
    ]
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, sort_keys=True, separators=(",", ":")
    ).encode()


def push_index(registry: Registry, repository: str, tag: str, manifests: list[PlatformManifest]) -> str:
    """Push the index over manifests already in the registry; returns `repository@sha256:…` (the index's digest)."""
    index = index_for(manifests)
    digest = registry.put_manifest(repository, tag, index, OCI_INDEX)
    if digest != sha256_digest(index):
        raise RegistryError(f"the registry reports digest {digest} for an index whose digest is {sha256_digest(index)}")
    return f"{repository}@{digest}"


def insecure_registries(environ: Mapping[str, str]) -> frozenset[str]:
    """The registries the site declared plain HTTP or self-signed ($ENVLOCK_INSECURE_REGISTRIES: host[:port], comma
    or space separated)."""
    return frozenset(re.split(r"[,\s]+", environ.get(INSECURE_REGISTRIES_ENV, "").strip())) - {""}


# The layer media types envlock unpacks itself: uncompressed (what envlock pushes) and gzip (what Docker pushes).
LAYER_COMPRESSION = {
    OCI_LAYER: "none",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    f"{OCI_LAYER}+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def _checked_digest(value: object, what: str) -> str:
    if not isinstance(value, str) or not DIGEST.match(value):
        raise RegistryError(f"{what} names {str(value)[:80]!r}, not a sha256 digest: refused")
    return value


def verified_manifest(registry: Registry, repository: str, digest: str) -> dict[str, Any]:
    """A manifest fetched by digest, checked against that digest and parsed (any problem: one RegistryError)."""
    data = registry.manifest(repository, digest)
    if data is None:
        raise RegistryError(f"the registry has no manifest {repository}@{digest[:19]}")
    if sha256_digest(data) != digest:
        raise RegistryError(f"the registry gave a manifest for {repository}@{digest[:19]} that is not that digest")
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise RegistryError(f"the manifest {repository}@{digest[:19]} is not JSON") from exc
    if not isinstance(document, dict):
        raise RegistryError(f"the manifest {repository}@{digest[:19]} is not a manifest")
    return document


def fetch_image(
    registry: Registry, repository: str, digest: str, image_id: str, folder: Path
) -> tuple[bytes, tuple[LayerFile, ...]]:
    """The image `image_id` by the digest it was pushed under (a manifest, or an index over platforms), without a
    container engine: every manifest, the config and each layer blob checked against its digest on arrival, the
    config against the image ID; layers land in `folder` (layer-0, layer-1, … lowest first). Returns the config
    and the layers, lowest first (each one's diff_id is checked by whoever unpacks it)."""
    _checked_digest(digest, f"{repository}@…")
    document = verified_manifest(registry, repository, digest)
    try:
        if "manifests" in document:  # an index: the platform entry whose config is the image wanted
            for entry in document["manifests"]:
                candidate = verified_manifest(registry, repository, _checked_digest(entry["digest"], "the index"))
                if candidate.get("config", {}).get("digest") == image_id:
                    document = candidate
                    break
            else:
                raise RegistryError(f"no platform of {repository}@{digest[:19]} is image {image_id[:19]}")
        found = _checked_digest(document["config"]["digest"], "the manifest's config")
        if found != image_id:
            raise RegistryError(f"{repository}@{digest[:19]} is image {found[:19]}, not {image_id[:19]}")
        config = registry.blob(repository, found)
        if config is None or sha256_digest(config) != found:
            raise RegistryError(f"the registry gave no config {found[:19]} for {repository}@{digest[:19]}")
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        described = document["layers"]
        if len(diff_ids) != len(described):
            raise RegistryError(
                f"{repository}@{digest[:19]} lists {len(described)} layers for {len(diff_ids)} diff_ids"
            )
        layers = []
        for index, (entry, diff_id) in enumerate(zip(described, diff_ids, strict=True)):
            compression = LAYER_COMPRESSION.get(entry.get("mediaType"))
            if compression is None:
                raise RegistryError(
                    f"layer {index} of {repository}@{digest[:19]} is {str(entry.get('mediaType'))[:80]}: envlock "
                    "unpacks uncompressed and gzip layers only",
                    hint="push the image with envlock build --push (uncompressed layers)",
                )
            blob = _checked_digest(entry["digest"], f"layer {index} of {repository}@{digest[:19]}")
            path = folder / f"layer-{index}"
            if not registry.blob_into(repository, blob, path):
                raise RegistryError(f"the registry has no layer {blob[:19]} of {repository}@{digest[:19]}")
            layers.append(LayerFile(path, compression, _checked_digest(diff_id, "the config's diff_ids")))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise RegistryError(f"{repository}@{digest[:19]} is not a readable image manifest: {exc!r}") from exc
    return config, tuple(layers)


def fetch_pushed(
    registry_for: Callable[[str], Registry], pushed: str, image_id: str, folder: Path
) -> tuple[bytes, tuple[LayerFile, ...]]:
    """fetch_image for a pushed reference `host[:port]/repository@sha256:…`, through the client for its host."""
    name, _, digest = pushed.partition("@")
    host, _, repository = name.partition("/")
    split_target(host)  # a registry address, or refused by name
    if not repository:
        raise RegistryError(f"{pushed!r} names no repository", hint="a pushed image is host[:port]/repository@sha256:…")
    return fetch_image(registry_for(host), repository, digest, image_id, folder)

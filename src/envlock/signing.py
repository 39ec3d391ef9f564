"""Local signing keys and DSSE envelopes (in-toto Statement v1 payloads), with the `cryptography` package.

A key is a PKCS#8 PEM file (Ed25519 by default, or ECDSA P-256), written with mode 0600 (the folders made for it
0700, whatever the umask); its key id is the sha256
of the public key's DER (SubjectPublicKeyInfo). An envelope without a key is still written, with no signatures:
its hashes can be checked, its origin cannot.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from envlock.codecs import strict_json
from envlock.errors import UsageError, VerificationError
from envlock.fsutil import atomic_write_bytes

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
KEY_ENV = "ENVLOCK_SIGNING_KEY"
KeyKind = Literal["ed25519", "ecdsa-p256"]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def canonical(document: Any) -> bytes:
    """Sorted keys, no spaces: the same statement gives the same payload bytes."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class PublicKey:
    """A verifying key, by its PEM."""

    pem: bytes

    def _key(self) -> Any:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        try:
            return serialization.load_pem_public_key(self.pem)
        except ValueError as exc:
            raise UsageError(f"not a PEM public key: {exc}", hint="use `envlock key public` to print one") from exc

    @property
    def keyid(self) -> str:
        """sha256 of the DER SubjectPublicKeyInfo, hex."""
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        der = self._key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).hexdigest()

    def verifies(self, message: bytes, signature: bytes) -> bool:
        """True when signature is this key's over message."""
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: PLC0415

        key = self._key()
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, message)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            else:
                return False
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """A private key loaded from its PEM file."""

    pem: bytes
    path: Path | None = None

    def _key(self) -> Any:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: PLC0415

        try:
            key = serialization.load_pem_private_key(self.pem, password=None)
        except (ValueError, TypeError) as exc:
            raise UsageError(
                f"the signing key {self.path or ''} is not an unencrypted PEM private key",
                hint="make one with `envlock key generate`",
            ) from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise UsageError("only Ed25519 and ECDSA P-256 signing keys are supported")
        return key

    @property
    def public(self) -> PublicKey:
        """The verifying half, as PEM."""
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        pem = (
            self._key()
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        return PublicKey(pem)

    def sign(self, message: bytes) -> bytes:
        """The signature over message."""
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

        key = self._key()
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return bytes(key.sign(message, ec.ECDSA(hashes.SHA256())))
        return bytes(key.sign(message))


def generate_key(out: Path, kind: KeyKind = "ed25519", overwrite: bool = False) -> SigningKey:
    """A new private key at out (mode 0600, never over an existing key unless asked), and its public PEM beside."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: PLC0415

    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists: envlock never overwrites a key", hint="choose another path with -o")
    _private_folders(out.parent)
    private = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write_bytes(out, pem, mode=0o600)
    key = SigningKey(pem, out)
    atomic_write_bytes(public_path(out), key.public.pem)
    return key


def _private_folders(folder: Path) -> None:
    """Make the missing folders of `folder` 0700 whatever the umask (mkdir's mode is masked by it); a folder that
    exists is left as it is: never loosened, and not ours to tighten."""
    missing: list[Path] = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs
        except OSError as exc:
            raise UsageError(f"cannot make the folder {made} for the key: {exc.strerror}") from exc
        made.chmod(0o700)


def work_tree_of(path: Path) -> Path | None:
    """The git work tree a path lies in (the nearest folder above it holding `.git`), or None: a key written there
    is one `git add -A` away from being published."""
    for folder in path.resolve().parents:
        if (folder / ".git").exists():
            return folder
    return None


def public_path(private: Path) -> Path:
    """Where `key generate` puts the public half: beside the private key, `.pub` added."""
    return private.with_name(private.name + ".pub")


def default_key_path() -> Path:
    """`envlock key generate` without -o: the user's config directory."""
    from platformdirs import user_config_path  # noqa: PLC0415

    return user_config_path("envlock") / "signing-key.pem"


def load_signing_key(flag: Path | None, environ: dict[str, str] | Any) -> SigningKey | None:
    """The key chosen by --key, else $ENVLOCK_SIGNING_KEY, else none (unsigned attestations)."""
    chosen = flag or (Path(environ[KEY_ENV]) if environ.get(KEY_ENV) else None)
    if chosen is None:
        return None
    try:
        mode = chosen.stat().st_mode & 0o777
        pem = chosen.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the signing key {chosen}: {exc.strerror}") from exc
    if mode & 0o077:
        raise UsageError(f"the signing key {chosen} can be read by others (mode {mode:o})", hint=f"chmod 600 {chosen}")
    return SigningKey(pem, chosen)


def load_public_key(path: Path) -> PublicKey:
    """A public key PEM (or a private key file: its public half)."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the key {path}: {exc.strerror}") from exc
    if b"PRIVATE KEY" in pem:
        return SigningKey(pem, path).public
    return PublicKey(pem)


def envelope(statement: dict[str, Any], key: SigningKey | None) -> dict[str, Any]:
    """A DSSE envelope around the statement: signed by key, or with no signatures."""
    payload = canonical(statement)
    signatures = []
    if key is not None:
        signature = key.sign(pae(PAYLOAD_TYPE, payload))
        signatures.append({"keyid": key.public.keyid, "sig": base64.b64encode(signature).decode()})
    return {"payload": base64.b64encode(payload).decode(), "payloadType": PAYLOAD_TYPE, "signatures": signatures}


def write_envelope(path: Path, document: dict[str, Any]) -> Path:
    """Write an envelope atomically (sorted, indented JSON)."""
    atomic_write_bytes(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
    return path


@dataclass(frozen=True)
class Opened:
    """An envelope read back: its statement, and what is known of its signatures."""

    statement: dict[str, Any]
    signed_by: str | None  # the key id that verified; None: unsigned, or not checked
    signatures: int


def signature_keyids(document: dict[str, Any]) -> list[str]:
    """The key ids the envelope's signatures declare (self-asserted: only a verified signature names its key)."""
    return [str(entry.get("keyid") or "") for entry in document.get("signatures") or [] if isinstance(entry, dict)]


def signed_by(document: dict[str, Any], keys: Sequence[PublicKey]) -> PublicKey | None:
    """The first of `keys` that holds a valid signature over the (already opened) envelope's payload."""
    payload = base64.b64decode(str(document.get("payload", "")), validate=True)
    message = pae(PAYLOAD_TYPE, payload)
    for entry in document.get("signatures") or []:
        if not isinstance(entry, dict):
            continue
        try:
            signature = base64.b64decode(str(entry.get("sig", "")), validate=True)
        except ValueError:
            continue
        for key in keys:
            if key.verifies(message, signature):
                return key
    return None


def open_envelope(document: object, key: PublicKey | None, where: str = "attestation") -> Opened:
    """Check the envelope's shape and, given a key, that it holds a valid signature by that key."""
    if not isinstance(document, dict) or not isinstance(document.get("payload"), str):
        raise VerificationError(f"{where} is not a DSSE envelope")
    if document.get("payloadType") != PAYLOAD_TYPE:
        raise VerificationError(f"{where} carries {document.get('payloadType')!r}, not an in-toto statement")
    try:
        payload = base64.b64decode(document["payload"], validate=True)
        statement = strict_json(payload)
    except ValueError as exc:
        raise VerificationError(f"{where}: its payload is not base64 JSON ({exc})") from exc
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise VerificationError(f"{where}: the payload is not an in-toto Statement v1")
    signatures = document.get("signatures") or []
    if not isinstance(signatures, list):
        raise VerificationError(f"{where}: 'signatures' is not a list")
    if key is None:
        return Opened(statement, None, len(signatures))
    message = pae(PAYLOAD_TYPE, payload)
    for entry in signatures:
        try:
            signature = base64.b64decode(str(entry.get("sig", "")), validate=True)
        except (ValueError, AttributeError):
            continue
        if key.verifies(message, signature):
            return Opened(statement, key.keyid, len(signatures))
    what = "has no signature" if not signatures else f"has no valid signature by key {key.keyid[:16]}"
    raise VerificationError(f"{where} {what}", hint="check --key: the public key of whoever signed it")

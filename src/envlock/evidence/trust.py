"""Which keys a verifier trusts: the keys it names (`--key PUB`), its own trust store, and a project's committed
folder of public keys. A key that arrives with the evidence (beside a run, inside a bundle) is never trusted for
being there.

The user's store is a folder of `<name>.pub` PEM files (`$ENVLOCK_TRUST_DIR`, default `~/.config/envlock/
trusted-keys/`); a project's is `.envlock/trusted-keys/*.pub`, which a team commits. `envlock trust add|list|remove`
keeps the user's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from envlock.errors import UsageError
from envlock.fsutil import atomic_write_bytes
from envlock.paths import ProjectLayout
from envlock.signing import PublicKey, load_public_key

TRUST_ENV = "ENVLOCK_TRUST_DIR"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class TrustedKey:
    """A public key the verifier trusts, by name, and where that trust comes from."""

    key: PublicKey
    name: str
    source: str  # "--key alice.pub", "your trust store", "the project's .envlock/trusted-keys"

    @property
    def keyid(self) -> str:
        """The key's id (sha256 of its DER SubjectPublicKeyInfo)."""
        return self.key.keyid


@dataclass(frozen=True)
class Trust:
    """The keys a verification accepts signatures from (empty: nothing can be VERIFIED)."""

    keys: tuple[TrustedKey, ...] = ()

    def find(self, keyid: str) -> TrustedKey | None:
        """The trusted key with this id, if any."""
        return next((k for k in self.keys if k.keyid == keyid), None)


def user_trust_dir(environ: Mapping[str, str]) -> Path:
    """The user's trust store: $ENVLOCK_TRUST_DIR, else ~/.config/envlock/trusted-keys."""
    if environ.get(TRUST_ENV):
        return Path(environ[TRUST_ENV])
    from platformdirs import user_config_path  # noqa: PLC0415

    return user_config_path("envlock") / "trusted-keys"


def project_trust_dir(project_dir: Path) -> Path:
    """A project's committed public keys: .envlock/trusted-keys/."""
    return ProjectLayout(project_dir).state / "trusted-keys"


def _folder(folder: Path, source: str, *, private: bool = False) -> list[TrustedKey]:
    if not folder.is_dir():
        return []
    _guarded(folder, private=private)
    found = []
    for path in sorted(folder.glob("*.pub")):
        if path.is_file() and not path.is_symlink():
            _guarded(path, private=private)
            found.append(TrustedKey(_checked(path), path.stem, source))
    return found


def _guarded(path: Path, *, private: bool) -> None:
    """Whoever can write a folder of trusted keys decides what verifies. The user's store (what a link to it points
    at) and its keys must be the user's (or root's) and writable by nobody else, as ssh's StrictModes asks of ~/.ssh;
    a project's committed folder may be a team's (group-writable, others' files) but never writable by anyone."""
    found = path.stat()  # through a link: the folder the store really is
    loose = found.st_mode & (0o022 if private else 0o002)
    if loose or (private and found.st_uid not in (os.getuid(), 0)):
        what = f"writable by others (mode {found.st_mode & 0o777:o})" if loose else f"owned by uid {found.st_uid}"
        whose = "your trust store's" if private else "the project's trusted-keys'"
        raise UsageError(
            f"{whose} {path} is {what}: anyone who can write it chooses what verifies",
            hint=f"chmod {'go' if private else 'o'}-w {path} (and check who added its keys)"
            if loose
            else f"remove {path} or chown it",
        )


def _checked(path: Path) -> PublicKey:
    key = load_public_key(path)
    try:
        key.keyid  # noqa: B018  (parses the PEM now: a broken trusted key is named, not met mid-verification)
    except UsageError as exc:
        raise UsageError(f"the trusted key {path} is not a PEM public key", hint=f"remove or replace {path}") from exc
    return key


def load_trust(keys: Sequence[Path], *, environ: Mapping[str, str], project_dir: Path | None) -> Trust:
    """The keys named on the command line, the user's store, and (for a project's own runs) the project's folder.

    `project_dir` is None for evidence from elsewhere (a bundle): a folder of keys that came with it proves nothing.
    """
    found = [TrustedKey(_checked(path), path.stem, f"--key {path}") for path in keys]
    found += _folder(user_trust_dir(environ), "your trust store", private=True)
    if project_dir is not None:
        found += _folder(project_trust_dir(project_dir), "the project's .envlock/trusted-keys")
    unique: dict[str, TrustedKey] = {}
    for key in found:
        unique.setdefault(key.keyid, key)
    return Trust(tuple(unique.values()))


def add_key(source: Path, name: str | None, environ: Mapping[str, str]) -> TrustedKey:
    """Trust a public key (a private key file gives its public half; only the public PEM is stored)."""
    key = _checked(source)
    stem = source.name
    for suffix in (".pub", ".pem", ".key"):
        stem = stem.removesuffix(suffix)
    chosen = name or stem or key.keyid[:16]
    if not _NAME.fullmatch(chosen):
        raise UsageError(
            f"{chosen!r} is not a usable key name (letters, digits, '.', '_', '-'; up to 64)", hint="pass --name NAME"
        )
    folder = user_trust_dir(environ)
    existing = {k.keyid: k for k in _folder(folder, "your trust store", private=True)}
    if key.keyid in existing:
        raise UsageError(
            f"key {key.keyid[:16]} is already trusted as {existing[key.keyid].name!r}",
            hint=f"envlock trust remove {existing[key.keyid].name} first to rename it",
        )
    target = folder / f"{chosen}.pub"
    if target.exists():
        raise UsageError(f"a trusted key is already named {chosen!r}", hint="choose another name with --name")
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)  # the store decides what a verification accepts: the user's alone to change
    atomic_write_bytes(target, key.pem, mode=0o644)
    return TrustedKey(key, chosen, "your trust store")


def list_keys(environ: Mapping[str, str], project_dir: Path | None) -> list[TrustedKey]:
    """Every key trusted here: the user's store, then the project's folder."""
    return list(load_trust((), environ=environ, project_dir=project_dir).keys)


def remove_key(which: str, environ: Mapping[str, str]) -> TrustedKey:
    """Stop trusting a key of the user's store, by name or by a key-id prefix (8 hex digits at least)."""
    folder = user_trust_dir(environ)
    keys = _folder(folder, "your trust store", private=True)
    chosen = [k for k in keys if k.name == which] or (
        [k for k in keys if k.keyid.startswith(which.lower())] if len(which) >= 8 else []
    )
    if not chosen:
        raise UsageError(f"no trusted key {which!r} in {folder}", hint="envlock trust list shows them")
    if len(chosen) > 1:
        raise UsageError(f"{which!r} names {len(chosen)} keys", hint="give more digits of the key id, or its name")
    (folder / f"{chosen[0].name}.pub").unlink()
    return chosen[0]

"""Index URLs may carry credentials; they are expanded at use and never stored."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

from envlock.errors import SpecError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def redact(url: str) -> str:
    """The URL without any user:password part, safe to write to a file or a log."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:  # not a URL at all: keep only what cannot be a credential
        return url.rsplit("@", 1)[-1] if "@" in url else url
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def redact_text(text: str, secret_urls: list[str]) -> str:
    """Remove every credential of the given URLs from a free text (a resolver's error output)."""
    for url in secret_urls:
        parts = urlsplit(url)
        for secret in (parts.password, parts.username):
            if secret:
                text = text.replace(secret, "****")
    return text


def expand(url: str, environ: dict[str, str] | None = None) -> str:
    """Substitute ${VAR} from the environment, so tokens live in the environment, not pyproject.toml."""
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise SpecError(
                f"index URL {redact(url)!r} refers to ${{{name}}}, which is not set",
                hint=f"export {name}=… before running envlock",
            )
        return env[name]

    return _VAR.sub(substitute, url)


def secrets_of(urls: list[str] | tuple[str, ...], environ: dict[str, str] | None = None) -> dict[str, str]:
    """Each value the URLs' ${VAR} references expand to, mapped back to its reference (`value → ${VAR}`)."""
    env = os.environ if environ is None else environ
    return {env[name]: f"${{{name}}}" for url in urls for name in _VAR.findall(url) if env.get(name)}


def conceal(url: str, secrets: dict[str, str]) -> str:
    """The URL with every expanded secret put back as its ${VAR}: what may be written (a token in the path)."""
    for value in sorted(secrets, key=len, reverse=True):
        url = url.replace(value, secrets[value])
    return url

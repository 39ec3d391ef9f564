"""Index URLs may carry credentials; they are expanded at use, never stored, and masked in every message.

Two functions keep them out of sight: `redact` drops a URL's credentials for what is written (a lock, a record);
`mask` is the one every message goes through (an error line, a resolver's output, a log): it shows URLs as pip does
(`https://user:****@host/…`) and puts each known secret value back as its `${VAR}` (or `****`).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from urllib.parse import quote, urlsplit, urlunsplit

from envlock.errors import EnvlockError, SpecError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
# The credentials of a URL inside free text: `scheme://userinfo@`, the userinfo up to the last @ before the host
# (a password with a bare @ in it is still masked whole).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#'\"`<>()\[\]]*)@")
MASK = "****"


def redact(url: str) -> str:
    """The URL without any user:password part, for what is written (a lock, a record); messages use `mask`."""
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


def _masked_userinfo(match: re.Match[str]) -> str:
    user, colon, password = match.group("userinfo").partition(":")
    if colon:  # pip's form: the user name stays, the password goes (a ${VAR} reference is no secret)
        return f"{match.group('scheme')}{user}:{password if _REFERENCE.fullmatch(password) else MASK}@"
    return f"{match.group('scheme')}{user if _REFERENCE.fullmatch(user) else MASK}@"  # a lone user name is a token


def mask(text: str, secrets: Mapping[str, str] | None = None) -> str:
    """Text safe to show (an error line, a resolver's output, a log): every known secret value (`secrets`: value →
    what stands for it, `${VAR}` or `****`), percent-encoded or not, replaced; then every URL's password as `****`
    (`https://user:****@host`) and a lone user name, a token, as `****@host`."""
    replacements: dict[str, str] = {}
    for value, shown in (secrets or {}).items():
        if value:
            replacements[value] = shown
            replacements.setdefault(quote(value, safe=""), shown)
            replacements.setdefault(quote(value), shown)
    for value in sorted(replacements, key=len, reverse=True):  # a longer secret may contain a shorter one
        text = text.replace(value, replacements[value])
    return _USERINFO.sub(_masked_userinfo, text)


def url_secrets(urls: Iterable[str]) -> dict[str, str]:
    """The credentials written in the URLs themselves (a password, or a lone user name: a token) → `****`."""
    found: dict[str, str] = {}
    for url in urls:
        try:
            parts = urlsplit(url)
            user, password = parts.username, parts.password
        except ValueError:
            continue
        for secret in (password,) if password is not None else (user,):
            if secret and not _REFERENCE.fullmatch(secret):
                found[secret] = MASK
    return found


def secrets_to_mask(urls: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every secret the URLs (as written, with their ${VAR}s) hold once expanded, with what shows instead: a
    `${VAR}`'s value shows as `${VAR}`, a password written in the URL as `****`."""
    urls = tuple(urls)
    return {**url_secrets(urls), **secrets_of(urls, environ)}


@contextlib.contextmanager
def masking(secrets: Mapping[str, str]) -> Iterator[None]:
    """An EnvlockError raised inside leaves with its message, hint and details masked: whatever a resolver or an
    index said, an expanded token never reaches the error line."""
    try:
        yield
    except EnvlockError as exc:
        exc.message = mask(exc.message, secrets)
        exc.hint = mask(exc.hint, secrets)
        exc.details = tuple(mask(line, secrets) for line in exc.details)
        exc.args = (exc.message, *exc.args[1:])
        raise


def expand(url: str, environ: dict[str, str] | None = None) -> str:
    """Substitute ${VAR} from the environment, so tokens live in the environment, not pyproject.toml."""
    env = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise SpecError(
                f"index URL {mask(url)!r} refers to ${{{name}}}, which is not set",
                hint=f"export {name}=… before running envlock",
            )
        return env[name]

    return _VAR.sub(substitute, url)


def secrets_of(urls: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each value the URLs' ${VAR} references expand to, mapped back to its reference (`value → ${VAR}`)."""
    env = os.environ if environ is None else environ
    return {env[name]: f"${{{name}}}" for url in urls for name in _VAR.findall(url) if env.get(name)}


def conceal(url: str, secrets: dict[str, str]) -> str:
    """The URL with every expanded secret put back as its ${VAR}: what may be written (a token in the path)."""
    for value in sorted(secrets, key=len, reverse=True):
        url = url.replace(value, secrets[value])
    return url

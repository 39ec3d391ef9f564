"""The one error tree: every failure a user can cause or meet is an EnvlockError."""

from __future__ import annotations


class EnvlockError(Exception):
    """A failure with a message written for the user, a hint and an exit code."""

    exit_code = 1
    default_hint = ""

    def __init__(self, message: str, hint: str = "", details: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint
        self.details = details


class SpecError(EnvlockError):
    """pyproject.toml or its [tool.envlock] table is malformed or inconsistent."""

    exit_code = 2


class LockfileError(EnvlockError):
    """envlock.lock is missing, malformed, or edited by hand."""

    exit_code = 3


class StaleLockError(EnvlockError):
    """envlock.lock no longer matches pyproject.toml."""

    exit_code = 4
    default_hint = "run `envlock lock` and commit the new envlock.lock"


class ResolverError(EnvlockError):
    """The resolver could not produce a resolution."""

    exit_code = 5


class ResolverMissingError(ResolverError):
    """The resolver program is not installed."""


class UnsatisfiableError(ResolverError):
    """The requirements cannot be satisfied together (or a package does not exist)."""


class IndexUnreachableError(ResolverError):
    """The package index could not be reached."""

    default_hint = "check the index URL, your network/proxy settings and any credentials"


class UnsupportedTargetError(ResolverError):
    """The chosen resolver cannot resolve for the requested target."""


class CudaMismatchError(EnvlockError):
    """The resolved CUDA stack contradicts [tool.envlock].cuda."""

    exit_code = 6


class EngineError(EnvlockError):
    """The container engine is unreachable or failed."""

    exit_code = 7
    default_hint = "is dockerd running? start it with `bash scripts/setup.sh` or `sudo systemctl start docker`"

"""The one error tree and the one exit-code table: every failure a user can cause or meet is an EnvlockError."""

from __future__ import annotations

# Every exit status envlock itself gives, with its meaning. docs/reference/exit-codes.md is generated from it;
# each EnvlockError subclass takes its code from here, and no two meanings share a code.
EXIT_CODES: dict[int, str] = {
    0: "success (for `run`, `runs wait`: the command exited 0)",
    1: "an unexpected internal error: a bug in envlock, shown with its traceback (please report it)",
    2: "command-line usage error (an unknown option, a missing argument, contradicting flags)",
    3: "`envlock.lock` is missing, malformed, carries values that are not allowed, or was edited by hand",
    4: "`envlock.lock` is stale (`lock --check`)",
    5: "resolution failed: unknown or unsatisfiable package, conflicting pins, index unreachable, resolver "
    "missing, or a target the resolver cannot serve",
    6: "the resolved CUDA stack contradicts `cuda = …`",
    7: "the container engine is unreachable or failed",
    8: "a locked file could not be downloaded",
    9: "a downloaded file's bytes do not match the lock",
    10: "a locked package has no wheel for the target (sdist only)",
    11: "the registry is unreachable or refused",
    12: "the host fails the preflight (driver too old, GPU architecture not built for); `--force` overrides",
    13: "no run by that id (or the prefix matches several)",
    14: "the host probe failed (NVML present but broken)",
    15: "the image could not be restored, or an image archive (restored, `envlock archive`, an export, a "
    "Charliecloud unpack, an upstream base's export) is malformed or does not match its digests: the line names "
    "the archive and the layer",
    16: "`envlock reproduce`: not reproduced",
    17: "Slurm refused the job or could not be asked (`sbatch`/`scontrol` missing or failing)",
    18: "MLflow: the tracking store is unreachable or refused, or its URI cannot be reached from a container",
    19: "`envlock runs wait --timeout S`: the run was still queued or running (`runs wait` itself exits 125 then)",
    20: "`pyproject.toml` is malformed or `[tool.envlock]` is invalid, or a params file it names cannot be read",
    21: "a run record was edited or damaged",
    22: "the image build failed (a base, a layer, the load into the engine) or a local file could not be written "
    "(a full disk or quota: the line names the file and the free space there)",
    23: "`envlock reproduce`: the original run could not be re-run (its code or inputs cannot be brought back)",
    24: "`envlock reproduce`: nothing compared (no output to compare, no log): the re-run proves nothing",
    25: "`envlock reproduce`: the original run had failed, and the re-run failed the same way (never REPRODUCED)",
    26: "`envlock verify`: a signature or a hash does not hold (each mismatch is named), or the attestation is "
    "missing or malformed",
    27: "`envlock init`: the file to import (requirements, uv.lock, poetry.lock, pylock.toml, environment.yml) is "
    "missing or cannot be read",
    28: "`envlock gc`: another `envlock gc` holds the cache",
    29: "`envlock verify` / `reproduce BUNDLE`: the evidence is unsigned (`--allow-unsigned` checks its hashes only)",
    30: "`envlock verify` / `reproduce BUNDLE`: signed by a key that is not trusted (`envlock trust add`, or `--key`)",
    31: "a bundle is malformed, truncated or hostile (links, unsafe names, sizes past the caps): refused before "
    "anything is written",
    32: "a folder of a shared cache that a build (or a pull's scratch) must write is not writable by this user (the "
    "line names the folder, its owner, group and mode); running an image already built never needs it",
    33: "`envlock diff --exit-code`: the two sides differ (not 1, as git diff gives, which is envlock's own bug code)",
    34: "a file or folder envlock must read or write cannot be: a read-only filesystem, permission denied, the working "
    "folder removed, or something else in its place (a file where a folder belongs); the line names it",
    125: "`run`, `runs wait`: envlock itself failed (a usage error included); the error line names its own code above",
    126: "`run`: the command was found but cannot be executed (not executable, a directory)",
    127: "`run`: the command was not found in the image",
    130: "interrupted (Ctrl-C, SIGTERM); every file is as it was before",
}
# Codes the commands that pass their command's status through (run, runs wait) never give for envlock's own
# failures: those exit ENVLOCK_FAILED instead, so that a training script's own `exit 3` is never read as ours.
ENVLOCK_FAILED = 125
CANNOT_EXECUTE = 126
NOT_FOUND = 127
USAGE = 2
INTERRUPTED = 130
NOT_REPRODUCED = 16
NOTHING_COMPARED = 24
FAILURE_REPRODUCED = 25
DIFFERS = 33


class EnvlockError(Exception):
    """A failure with a message written for the user, a hint and an exit code."""

    exit_code = 1
    default_hint = ""

    def __init__(self, message: str, hint: str = "", details: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint
        self.details = details


class UsageError(EnvlockError):
    """The command line asks for something contradictory or incomplete (beyond what the parser can see)."""

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


class EngineUnreachableError(EngineError):
    """The Docker engine cannot be reached at all (no socket, no daemon, DOCKER_HOST pointing at nothing)."""


class EngineTimeoutError(EngineError):
    """The engine took longer to answer than envlock waited (it may still be working)."""

    default_hint = "the engine may be slow or busy (see `docker info`); run the command again"


class DownloadError(EnvlockError):
    """A file of the lock could not be fetched."""

    exit_code = 8
    default_hint = "check your network and the index credentials; run the command again to resume"


class HashMismatchError(EnvlockError):
    """A file's bytes do not match the sha256 in the lock."""

    exit_code = 9
    default_hint = "the index serves other bytes than were locked; if that is expected, run `envlock lock --upgrade`"


class NoWheelError(EnvlockError):
    """A locked package has no wheel the target can install."""

    exit_code = 10


class RegistryError(EnvlockError):
    """The registry refused or could not be reached."""

    exit_code = 11
    default_hint = "check the registry address and that it is running; credentials come from `docker login`"


class PreflightError(EnvlockError):
    """The host cannot run the lock's stack (driver too old, GPU architecture not built for, no GPU)."""

    exit_code = 12
    default_hint = "use --force to run anyway (recorded in the run record)"


class RunNotFoundError(EnvlockError):
    """No run record by that id."""

    exit_code = 13
    default_hint = "list the runs with `envlock runs`"


class NvmlUnavailableError(EnvlockError):
    """NVML cannot start: no driver, driver not loaded, no permission. The probe reports a CPU host."""

    exit_code = 14


class HostProbeError(EnvlockError):
    """NVML started but failed while reading the GPUs (a GPU fell off the bus, the driver broke)."""

    exit_code = 14
    default_hint = "see `nvidia-smi` for the driver's and the GPUs' state"


class RestoreError(EnvlockError):
    """The image could not be brought back, or what came back is not the recorded image."""

    exit_code = 15


class ImageArchiveError(RestoreError):
    """An image archive (a docker-archive: a restored file, an engine's export) is not a readable one: no manifest,
    a member it names missing, a config or manifest malformed, a member envlock's tar rules refuse."""


class ArchiveMismatchError(ImageArchiveError):
    """An image archive's layer is not its diff_id, or its config is not the digest it should be: the one error for
    this failure, wherever it is found (restore, export, Charliecloud, the base store, the fake engine)."""

    default_hint = "the archive was changed or damaged: use another copy, the registry, or a rebuild from the lock"


class NotReproducedError(EnvlockError):
    """`envlock reproduce` compared and found a difference (the verdict is printed before)."""

    exit_code = 16


class SchedulerError(EnvlockError):
    """The scheduler refused or could not be asked."""

    exit_code = 17
    default_hint = (
        "is Slurm reachable from here? `sinfo` should list the partitions (scripts/services.sh starts a local one)"
    )


class TrackingError(EnvlockError):
    """The tracking server refused, or the tracking URI cannot be used from a container."""

    exit_code = 18
    default_hint = "check MLFLOW_TRACKING_URI (or --mlflow URI); --no-mlflow runs without tracking"


class RunWaitTimeoutError(EnvlockError):
    """A run was still queued or running when `envlock runs wait` stopped waiting."""

    exit_code = 19


class SpecError(EnvlockError):
    """pyproject.toml or its [tool.envlock] table is malformed or inconsistent."""

    exit_code = 20


class ParamsError(SpecError):
    """A params file (params = [...] in [tool.envlock]) is missing, of an unknown kind, or malformed."""

    default_hint = 'params files are YAML, JSON or TOML tables inside the project (params = ["config/train.yaml"])'


class RunRecordError(EnvlockError):
    """A run record exists but cannot be read."""

    exit_code = 21
    default_hint = "envlock writes records atomically: this one was edited or damaged; restore it or remove its folder"


class BuildError(EnvlockError):
    """The image could not be built, or a file envlock writes could not be written."""

    exit_code = 22


class DiskFullError(BuildError):
    """A file envlock writes (a lock, a run's record, log or saved files, a cache entry) met a full disk or quota."""

    default_hint = "free some space there (or point TMPDIR / ENVLOCK_CACHE_DIR at a larger disk), then run it again"


class CacheNotWritableError(EnvlockError):
    """A build must write a folder of the (shared) cache that this user may not write."""

    exit_code = 32


class FileAccessError(EnvlockError):
    """A file or folder envlock must read or write cannot be (read-only filesystem, permission denied, a file where
    a folder belongs): the environment's failure, not envlock's, so one line naming it rather than a traceback."""

    exit_code = 34


class RerunError(EnvlockError):
    """`envlock reproduce` could not set the original run up again (its code, diff or inputs)."""

    exit_code = 23


class VerificationError(EnvlockError):
    """An attestation's signature or one of its hashes does not hold against what is on disk."""

    exit_code = 26
    default_hint = "something changed since the attestation was made: the lines above name each mismatch"


class UnsignedError(VerificationError):
    """The evidence carries no signature: its hashes may hold, but nobody vouches for it."""

    exit_code = 29
    default_hint = "ask for a signed attestation, or pass --allow-unsigned to check its hashes only"


class UntrustedKeyError(VerificationError):
    """The evidence is signed, but by no key the verifier trusts (a key shipped beside it is never trusted)."""

    exit_code = 30
    default_hint = "if you know whose key it is: envlock trust add PUB --name NAME (or pass --key PUB)"


class BundleError(EnvlockError):
    """A bundle (or another archive from elsewhere) is malformed, truncated or breaks envlock's member rules."""

    exit_code = 31
    default_hint = "ask its sender for a new bundle made with `envlock bundle`"


class ImportSourceError(EnvlockError):
    """`envlock init`: the requirements or lock file to import is missing, malformed or of an unknown kind."""

    exit_code = 27


class CacheBusyError(EnvlockError):
    """`envlock gc`: another collection is running over the same cache."""

    exit_code = 28
    default_hint = "wait for the other `envlock gc` to finish, then run it again"

"""`envlock lock`: spec + resolver (+ base store, + upstream base) → Lock, written only when something changed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.utils import canonicalize_name

from envlock import __version__
from envlock.errors import EnvlockError, LockfileError, SpecError, StaleLockError, UsageError
from envlock.fsutil import no_space_is_an_error
from envlock.lock import lockfile, recipes
from envlock.lock.credentials import conceal, expand, masking, redact, secrets_of, secrets_to_mask
from envlock.lock.cuda import check_wish, derive_cuda
from envlock.lock.layering import relocked_order
from envlock.lock.lockdiff import LockDiff, diff_locks
from envlock.lock.lockfile import BaseLock, Lock, TargetBase, TargetLock
from envlock.lock.recipes import BaseStoreView, UpstreamView
from envlock.lock.resolve import LockedPackage, Resolver, ResolveRequest
from envlock.lock.spec import Spec, load_spec
from envlock.lock.targets import ARCHITECTURES, DEFAULT_GLIBC, Platform, Target, host_platform
from envlock.report import Report, silent


@dataclass(frozen=True)
class LockOptions:
    """How `envlock lock` treats the earlier pins."""

    upgrade: bool = False
    upgrade_packages: tuple[str, ...] = ()


@dataclass(frozen=True)
class LockOutcome:
    """What `envlock lock` did."""

    lock: Lock
    previous: Lock | None
    written: bool
    resolved: bool
    changes: LockDiff = field(default_factory=LockDiff)


Upstream = Callable[[str], UpstreamView]


def base_of(spec: Spec, upstream: Upstream | None) -> tuple[BaseLock, tuple[int, int], UpstreamView | None]:
    """The base's identity, the glibc wheels may assume, and (for an upstream image) the image itself."""
    if recipes.is_image_reference(spec.base):
        image = upstream(spec.base) if upstream else None
        if image is not None and spec.python not in image.python_homes:
            shipped = ", ".join(sorted(image.python_homes)) or "none"
            raise SpecError(
                f"base {spec.base} has no python{spec.python} in /usr/local/bin or /usr/bin (it has: {shipped})",
                hint='set python = "X.Y" in [tool.envlock] to a Python the base ships',
            )
        digest = spec.base.rsplit("@", 1)[1]
        return BaseLock(spec.base, "image", digest.removeprefix("sha256:")), DEFAULT_GLIBC, image
    recipe = recipes.load_recipe(spec.base)
    return BaseLock(recipe.name, "recipe", recipe.sha256), recipe.glibc, None


def check(spec: Spec) -> Lock:
    """Raise StaleLockError unless the lock on disk was made from exactly these inputs (no resolving)."""
    if not spec.lock_path.exists():
        raise StaleLockError(f"there is no lock file at {spec.lock_path}")
    lock = lockfile.read(spec.lock_path)
    if (moved := source_moved(spec)) is not None:
        raise StaleLockError(moved)
    if lock.input_hash != spec.input_hash():
        raise StaleLockError("envlock.lock is stale: pyproject.toml or the base recipe changed since it was locked")
    return lock


def source_moved(spec: Spec) -> str | None:
    """Why the file `envlock init` imported no longer matches what was taken from it, or None."""
    source = spec.imported_from
    if source is None or not source.changed(spec.project_dir):
        return None
    if not (spec.project_dir / source.path).is_file():
        return f"{source.path} was imported (tool.envlock.imported-from) but is gone"
    return f"{source.path} changed since it was imported: run `envlock lock`"


def _checked_upgrades(previous: Lock | None, wanted: set[str]) -> None:
    """--upgrade-package names must be in the current lock (a typo would silently upgrade nothing)."""
    locked = {p.name for t in previous.targets for p in t.packages} if previous else set()
    unknown = sorted(wanted - locked)
    if unknown:
        raise UsageError(
            f"--upgrade-package {', '.join(unknown)}: not in the current lock",
            hint="name packages listed by `envlock show`, or add them to your requirements",
        )


@dataclass(frozen=True)
class _Resolution:
    """What every platform's resolution shares: the spec, the earlier pins, the indexes (expanded only here)."""

    spec: Spec
    resolver: Resolver
    previous: Lock | None
    options: LockOptions
    wanted: frozenset[str]
    glibc: tuple[int, int]
    image: UpstreamView | None
    report: Report

    def target(self, platform: Platform, pin_base: Callable[[], TargetBase | None]) -> TargetLock:
        """Resolve one platform and derive its CUDA stack; then pin its base (a resolution failure builds none)."""
        spec = self.spec
        target = Target(platform=platform, python=spec.python, glibc=self.glibc)
        preferences: tuple[LockedPackage, ...] = ()
        if self.previous and platform in {t.platform for t in self.previous.targets}:
            preferences = self.previous.target(platform).packages
        count = len(spec.requirements)
        self.report(f"resolving {count} requirement{'s' if count != 1 else ''} for {platform} (Python {spec.python})")
        request = ResolveRequest(
            requirements=spec.requirements,
            target=target,
            index_url=expand(spec.index_url),
            extra_index_urls=tuple(expand(u) for u in spec.extra_index_urls),
            preferences=preferences,
            upgrade=self.options.upgrade,
            upgrade_packages=tuple(sorted(self.wanted)),
            constraints=spec.constraints,
        )
        # Whatever the resolver says (its own output, an index's URL) reaches the error line with every expanded
        # ${VAR} shown as its reference: CI logs are often public.
        with masking(secrets_to_mask((spec.index_url, *spec.extra_index_urls))):
            packages = self.resolver.resolve(request)
        # The resolver sees expanded URLs and answers with file URLs under them: a token in an index's path would
        # be written into the lock (and from there into exports and images) unless put back as its ${VAR}.
        secrets = secrets_of((spec.index_url, *spec.extra_index_urls))
        packages = [_concealed(p, secrets) for p in packages]
        stack = derive_cuda(packages, self.image.env if self.image else None)
        check_wish(stack, spec.cuda, platform)
        return TargetLock(platform, target.uv_python_platform, stack, tuple(packages), pin_base())


def _pinned_base(
    spec: Spec, base: BaseLock, image: UpstreamView | None, bases: BaseStoreView | None, *, platform: Platform,
    report: Report,
) -> TargetBase | None:  # fmt: skip
    """Pin the base's bytes and Debian packages: the upstream image's, or a recipe base this host builds."""
    if image is not None:
        return TargetBase(image.image_id, image.packages) if image.architecture == ARCHITECTURES[platform] else None
    if bases is None or base.kind != "recipe":
        return None
    recipe = recipes.load_recipe(base.name).including(spec.system_packages)
    if bases.get(recipe, platform) is None:
        if not bases.available():
            report(f"warning: mmdebstrap is not installed, so the {recipe.name} base is not pinned in the lock")
            return None
        if not bases.builds_for(platform):
            report(
                f"note: this {host_platform()} machine cannot run {platform} programs (no qemu binfmt handler), "
                f"so the {platform} base is not pinned in the lock"
            )
            return None
        native = platform == host_platform()
        report(
            f"building base {recipe.name} for {platform} with mmdebstrap "
            f"(once per machine, {'~1 min' if native else 'minutes under emulation'})"
        )
    built = bases.ensure(recipe, platform, report=report)
    return TargetBase(built.diff_id, built.packages)


def lock_project(
    spec: Spec,
    resolver: Resolver,
    *,
    upstream: Upstream | None = None,
    bases: BaseStoreView | None = None,
    options: LockOptions = LockOptions(),
    report: Report = silent,
) -> LockOutcome:
    """Resolve every platform, derive its CUDA stack, and write envlock.lock if its content changed."""
    previous = _previous(spec)
    wanted = frozenset(canonicalize_name(n) for n in options.upgrade_packages)
    if previous and not options.upgrade and not wanted and previous.input_hash == spec.input_hash():
        report("envlock.lock is up to date with pyproject.toml (use --upgrade to look for newer versions)")
        return LockOutcome(previous, previous, written=False, resolved=False)
    if wanted:
        _checked_upgrades(previous, set(wanted))
    base, glibc, image = base_of(spec, upstream)
    resolution = _Resolution(spec, resolver, previous, options, wanted, glibc, image, report)

    def resolve_one(platform: Platform) -> TargetLock:
        return resolution.target(
            platform, lambda: _pinned_base(spec, base, image, bases, platform=platform, report=report)
        )

    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415  (`check`, on every run and build, needs no pool)

    with ThreadPoolExecutor(max_workers=len(spec.platforms) + 1) as pool:
        resolver_version = pool.submit(resolver.version)  # a subprocess for uv: overlap it with resolving
        targets = tuple(pool.map(resolve_one, spec.platforms))
    lock = Lock(
        python=spec.python,
        base=base,
        system_packages=spec.system_packages,
        indexes=tuple(redact(u) for u in (spec.index_url, *spec.extra_index_urls)),
        source_date_epoch=lockfile.source_date_epoch(targets),
        targets=targets,
        input_hash=spec.input_hash(),
        resolver=resolver_version.result(),
        envlock_version=__version__,
        local_packages=spec.local_packages,
        image_layout=lockfile.IMAGE_LAYOUT,
    )
    # The layers' order follows the previous lock's: those a change leaves alone stay where the engine has them.
    lock = replace(lock, targets=tuple(replace(t, layers=relocked_order(t, lock.python, previous)) for t in targets))
    # Nothing but the layout would change: the lock stays as it is, and so does its image (a new layout comes with
    # the next real change, which gives a new image anyway).
    same = previous and _unlaid(lock).lock_hash == _unlaid(previous).lock_hash
    if previous and same and previous.input_hash == lock.input_hash:
        return LockOutcome(previous, previous, written=False, resolved=True)
    # A full disk leaves the previous lock as it was (written beside it, then renamed over): one line names it.
    with no_space_is_an_error("locking (the previous lock is intact)", (spec.lock_path.parent,)):
        lockfile.write(spec.lock_path, lock)
    changes = diff_locks(previous, lock) if previous else LockDiff()
    return LockOutcome(lock, previous, written=True, resolved=True, changes=changes)


def _unlaid(lock: Lock) -> Lock:
    """The lock without its layout: what it locks, whatever order its image's layers are in."""
    return replace(lock, image_layout=None, targets=tuple(replace(t, layers=None) for t in lock.targets))


def _concealed(package: LockedPackage, secrets: dict[str, str]) -> LockedPackage:
    if not secrets:
        return package
    wheels = tuple(replace(w, url=conceal(w.url, secrets)) for w in package.wheels)
    sdist = replace(package.sdist, url=conceal(package.sdist.url, secrets)) if package.sdist else None
    return replace(package, wheels=wheels, sdist=sdist)


def _previous(spec: Spec) -> Lock | None:
    if not spec.lock_path.exists():
        return None
    try:
        return lockfile.read(spec.lock_path)
    except LockfileError as exc:
        raise LockfileError(
            f"the existing envlock.lock cannot be used: {exc.message}",
            hint="restore it from version control, or delete it to lock afresh",
        ) from exc


def staleness(project_dir: Path, lock: Lock) -> str:
    """`up to date`, `stale`, or why we cannot tell: `show` works even when pyproject.toml is broken."""

    try:
        spec = load_spec(project_dir)
    except EnvlockError:
        return "unknown (pyproject.toml does not load)"
    if source_moved(spec) is not None:
        return f"stale ({spec.imported_from.path if spec.imported_from else ''} changed: run envlock lock)"
    return "up to date" if spec.input_hash() == lock.input_hash else "stale (run envlock lock)"

"""Small pure pieces: credentials, target tags, pip-compile output, uv's failure report, pylock export."""

from __future__ import annotations

import textwrap
import tomllib
from dataclasses import replace

import pytest
from packaging.tags import Tag

from envlock.errors import SpecError, UnsatisfiableError
from envlock.lock.credentials import expand, mask, redact, url_secrets
from envlock.lock.cuda import CPU
from envlock.lock.export import to_pylock
from envlock.lock.lockfile import TargetLock
from envlock.lock.piptools import parse_pins
from envlock.lock.resolve import ResolveRequest
from envlock.lock.targets import Target
from envlock.lock.uv import explain_failure
from tests.fakes import package
from tests.unit.test_lockfile import make_lock


def test_redact_removes_userinfo_only() -> None:
    assert redact("https://alice:s3cret@pypi.example:8443/simple/") == "https://pypi.example:8443/simple/"
    assert redact("https://__token__@pypi.example/simple") == "https://pypi.example/simple"
    assert redact("https://pypi.org/simple") == "https://pypi.org/simple"
    text = mask("GET https://alice:s3cret@x/ failed: s3cret refused", url_secrets(["https://alice:s3cret@x/"]))
    assert text == "GET https://alice:****@x/ failed: **** refused"


def test_expand_reads_environment() -> None:
    assert expand("https://u:${TOKEN}@x/simple", {"TOKEN": "t0k"}) == "https://u:t0k@x/simple"
    with pytest.raises(SpecError, match=r"\$\{TOKEN\}, which is not set"):
        expand("https://u:${TOKEN}@x/simple", {})


def test_target_tags_accept_the_right_wheels() -> None:
    amd64 = set(Target("linux/amd64", "3.11", (2, 36)).wheel_tags())
    assert Tag("cp311", "cp311", "manylinux_2_17_x86_64") in amd64
    assert Tag("cp311", "cp311", "manylinux2014_x86_64") in amd64
    assert Tag("cp37", "abi3", "manylinux1_x86_64") in amd64
    assert Tag("py3", "none", "any") in amd64
    assert Tag("cp311", "cp311", "manylinux_2_39_x86_64") not in amd64
    assert Tag("cp312", "cp312", "manylinux_2_17_x86_64") not in amd64
    assert Tag("cp311", "cp311", "manylinux_2_17_aarch64") not in amd64
    assert Tag("cp311", "cp311", "musllinux_1_2_x86_64") not in amd64
    arm64 = set(Target("linux/arm64", "3.11", (2, 36)).wheel_tags())
    assert Tag("cp311", "cp311", "manylinux2014_aarch64") in arm64
    assert Tag("cp311", "cp311", "manylinux1_x86_64") not in arm64


def test_parse_pins_with_hashes_and_comments() -> None:
    text = (
        "certifi==2024.8.30 \\\n    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64 + "\n"
        "    # via requests\nCharset_Normalizer==3.4.0 ; python_version >= '3.8' \\\n"
        "    --hash=sha256:" + "c" * 64 + "\n"
    )
    assert parse_pins(text) == {"certifi": "2024.8.30", "charset-normalizer": "3.4.0"}


def test_pylock_export_marks_platform_specific_packages() -> None:
    lock = make_lock([package("numpy", "2.1.3", "cp311-cp311-manylinux_2_17_x86_64"), package("six", "1.16.0")])
    arm = TargetLock(
        "linux/arm64",
        "aarch64-manylinux_2_36",
        CPU,
        (package("numpy", "2.1.3", "cp311-cp311-manylinux_2_17_aarch64"), package("six", "1.16.0")),
    )
    lock = replace(lock, targets=(*lock.targets, arm))
    document = tomllib.loads(to_pylock(lock))
    assert document["lock-version"] == "1.0"
    assert document["requires-python"] == "==3.11.*"
    assert len(document["environments"]) == 2
    entries = {(p["name"], p.get("marker")) for p in document["packages"]}
    assert ("six", None) in entries
    numpy_markers = sorted(str(m) for n, m in entries if n == "numpy")
    assert numpy_markers == [
        "(sys_platform == 'linux' and platform_machine == 'aarch64' and python_version == '3.11')",
        "(sys_platform == 'linux' and platform_machine == 'x86_64' and python_version == '3.11')",
    ]
    only_arm = tomllib.loads(to_pylock(lock, ["linux/arm64"]))
    assert {p["name"] for p in only_arm["packages"]} == {"numpy", "six"}
    assert all("marker" not in p for p in only_arm["packages"])


@pytest.mark.parametrize("width", [200, 60, 40])
def test_an_unknown_package_is_named_whatever_the_width_uv_wrapped_its_report_at(width: int) -> None:
    report = (
        "Because envlock-no-such-package-zz was not found in the package registry and you require "
        "envlock-no-such-package-zz, we can conclude that your requirements are unsatisfiable."
    )
    stderr = "  x No solution found when resolving dependencies:\n" + textwrap.fill(
        report, width, subsequent_indent="      "
    )
    request = ResolveRequest(
        ("envlock-no-such-package-zz",), Target("linux/amd64", "3.11", (2, 36)), "https://pypi.org/simple"
    )
    error = explain_failure(stderr, request)
    assert isinstance(error, UnsatisfiableError)
    assert error.message == "package 'envlock-no-such-package-zz' was not found on the index (https://pypi.org/simple)"

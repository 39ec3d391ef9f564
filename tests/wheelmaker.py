"""Build small, valid wheels on the spot for tests (no network)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def build_wheel(
    directory: Path,
    name: str,
    version: str,
    *,
    requires: tuple[str, ...] = (),
    console_scripts: tuple[str, ...] = (),
    tag: str = "py3-none-any",
    padding: int = 0,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """A minimal, valid wheel with one module, optional `name = module:function` console scripts."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f'__version__ = "{version}"\n',
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist_info}/WHEEL": (f"Wheel-Version: 1.0\nGenerator: envlock-tests\nRoot-Is-Purelib: true\nTag: {tag}\n"),
    }
    files.update(extra_files or {})
    if console_scripts:
        files[f"{module}/__init__.py"] += "def main():\n    print('hello from', __name__)\n"
        files[f"{dist_info}/entry_points.txt"] = "[console_scripts]\n" + "".join(f"{s}\n" for s in console_scripts)
    if padding:  # bytes that compress away in the wheel but fill an (uncompressed) layer
        files[f"{module}/padding.txt"] = "x" * padding
    record = ""
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(text.encode())}\n"
    files[f"{dist_info}/RECORD"] = record + f"{dist_info}/RECORD,,\n"
    wheel = directory / f"{module}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(zipfile.ZipInfo(path, date_time=(2024, 1, 1, 0, 0, 0)), text)
    return wheel

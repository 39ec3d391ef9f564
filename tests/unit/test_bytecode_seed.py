"""Seeding a new image's bytecode folder from another image's: real layer tars, real folders, real links."""

from __future__ import annotations

import json
import os
import py_compile
import shutil
import sys
from pathlib import Path

import pytest

from envlock.engine.bytecode import (
    LISTINGS_DIR,
    STACK_FILE,
    ImageStack,
    Listing,
    list_layer,
    read_stack,
    seed,
    sources,
)
from envlock.engine.launch import DockerLauncher
from envlock.fsutil import remove_tree
from envlock.image.layers import LayerStore, LayerTars, write_layer
from tests.fakes import FakeDockerClient

TAG = sys.implementation.cache_tag
SITE = "opt/envlock/venv/lib/python3.11/site-packages"
EPOCH = 1_700_000_000


class Layers:
    """Layer tars made by envlock's own writer from small trees, found by diff_id as the cache finds them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tars: dict[str, Path] = {}

    def make(self, name: str, files: dict[str, str]) -> str:
        root = self.tmp / "trees" / name
        for path, text in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(text)
        root.mkdir(parents=True, exist_ok=True)
        layer = write_layer(root, self.tmp / f"{name}.tar", EPOCH)
        self.tars[layer.diff_id] = layer.tar
        return layer.diff_id

    def __call__(self, diff_id: str) -> Path | None:
        return self.tars.get(diff_id)


def compiled(folder: Path, source: str) -> Path:
    """A real timestamp pyc in an image's folder, where PYTHONPYCACHEPREFIX puts the one of /`source`."""
    directory, _, name = source.rpartition("/")
    pyc = folder / directory / f"{name.removesuffix('.py')}.{TAG}.pyc"
    pyc.parent.mkdir(parents=True, exist_ok=True)
    code = folder.parent / "sources" / source
    code.parent.mkdir(parents=True, exist_ok=True)
    code.write_text(f"# {source}\n")
    py_compile.compile(str(code), cfile=str(pyc), doraise=True)
    return pyc


def image_folder(root: Path, name: str, stack: ImageStack, pycs: list[str]) -> Path:
    """An image's folder, its stack written, filled with pycs for these sources."""
    folder = root / (name * 64)[:64]
    folder.mkdir(parents=True)
    for source in pycs:
        compiled(folder, source)
    (folder / STACK_FILE).write_text(stack.as_json())
    return folder


def seeded_names(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*.pyc")}


def test_a_pyc_is_seeded_only_for_a_source_of_the_same_layer_never_for_other_bytes_of_the_same_path(
    tmp_path: Path,
) -> None:
    layers = Layers(tmp_path)
    base = layers.make("base", {"usr/lib/python3.11/os.py": "import sys\n"})
    shared = layers.make("shared", {f"{SITE}/keep/__init__.py": "KEEP = 1\n"})
    # Same path, same size, same mtime (the layer's): only the bytes differ, which Python's check cannot see.
    one = layers.make("one", {f"{SITE}/mod.py": "VALUE = 1\n"})
    two = layers.make("two", {f"{SITE}/mod.py": "VALUE = 2\n"})
    root = tmp_path / "pyc"
    wanted = ["usr/lib/python3.11/os.py", f"{SITE}/keep/__init__.py", f"{SITE}/mod.py"]
    earlier = image_folder(root, "a", ImageStack((base, shared, one), (base,)), wanted)
    new = root / ("b" * 64)
    new.mkdir()

    done = seed(root, new, ImageStack((base, shared, two), (base,)), layers)

    assert seeded_names(new) == {
        f"usr/lib/python3.11/os.{TAG}.pyc",
        f"{SITE}/keep/__init__.{TAG}.pyc",
    }, "mod.py holds other bytes in the new image: its pyc is not taken"
    assert (done.files, done.sources) == (2, 1) and done.seconds >= 0
    mine = new / f"{SITE}/keep/__init__.{TAG}.pyc"
    assert mine.stat().st_ino == (earlier / f"{SITE}/keep/__init__.{TAG}.pyc").stat().st_ino, "a hard link"
    assert read_stack(new) == ImageStack((base, shared, two), (base,))


def test_a_layer_moved_in_the_stack_is_still_the_same_bytes(tmp_path: Path) -> None:
    layers = Layers(tmp_path)
    base = layers.make("base", {"usr/lib/python3.11/os.py": "import sys\n"})
    shared = layers.make("shared", {f"{SITE}/keep.py": "KEEP = 1\n"})
    one = layers.make("one", {f"{SITE}/mod.py": "VALUE = 1\n"})
    root = tmp_path / "pyc"
    image_folder(root, "a", ImageStack((base, shared, one), (base,)), [f"{SITE}/keep.py", f"{SITE}/mod.py"])
    new = root / ("b" * 64)
    new.mkdir()
    seed(root, new, ImageStack((base, one, shared), (base,)), layers)
    assert seeded_names(new) == {f"{SITE}/keep.{TAG}.pyc", f"{SITE}/mod.{TAG}.pyc"}


def test_a_source_hidden_by_a_higher_layer_is_not_seeded(tmp_path: Path) -> None:
    """Another file at the path, a whiteout of it, or an opaque folder over it: the image shows other bytes."""
    layers = Layers(tmp_path)
    base = layers.make("base", {})
    shared = layers.make("shared", {f"{SITE}/a.py": "A = 1\n", f"{SITE}/b.py": "B = 1\n", f"{SITE}/pkg/c.py": "C\n"})
    root = tmp_path / "pyc"
    wanted = [f"{SITE}/a.py", f"{SITE}/b.py", f"{SITE}/pkg/c.py"]
    image_folder(root, "a", ImageStack((base, shared), (base,)), wanted)
    over = layers.make(
        "over",
        {f"{SITE}/a.py": "A = 2\n", f"{SITE}/.wh.b.py": "", f"{SITE}/pkg/.wh..wh..opq": "", f"{SITE}/pkg/d.py": "D\n"},
    )
    new = root / ("b" * 64)
    new.mkdir()
    done = seed(root, new, ImageStack((base, shared, over), (base,)), layers)
    assert seeded_names(new) == set() and done.files == 0


def test_shadowing_in_the_earlier_image_counts_too() -> None:
    """The earlier image's pyc is for its own topmost copy: a path it shows from a higher layer is not the shared
    layer's file, whatever the new image shows."""
    listings: dict[str, Listing] = {
        "base": (),
        "shared": (("x/m.py", "f"), ("x", "d")),
        "over": (("x/m.py", "f"),),
        "link": (("x", "o"),),
    }
    assert sources(("base", "shared"), listings.get) == {"x/m.py": "shared"}
    assert sources(("base", "shared", "over"), listings.get) == {"x/m.py": "over"}
    assert sources(("base", "shared", "link"), listings.get) == {}, "a link replaced the folder"
    assert sources(("base", "shared", "unknown"), listings.get) == {}, "an unlisted layer may hide anything"
    assert sources(("unknown", "shared"), listings.get) == {"x/m.py": "shared"}


def test_another_base_seeds_nothing(tmp_path: Path) -> None:
    """The base holds the interpreter: bytecode of another interpreter is not taken, even for a shared layer."""
    layers = Layers(tmp_path)
    base = layers.make("base", {"usr/bin/python3": "one"})
    other = layers.make("other", {"usr/bin/python3": "two"})
    shared = layers.make("shared", {f"{SITE}/keep.py": "KEEP = 1\n"})
    root = tmp_path / "pyc"
    image_folder(root, "a", ImageStack((base, shared), (base,)), [f"{SITE}/keep.py"])
    new = root / ("b" * 64)
    new.mkdir()
    assert seed(root, new, ImageStack((other, shared), (other,)), layers).files == 0


def test_links_are_never_followed_out_of_the_cache(tmp_path: Path) -> None:
    layers = Layers(tmp_path)
    base = layers.make("base", {})
    shared = layers.make("shared", {f"{SITE}/a.py": "A\n", f"{SITE}/pkg/b.py": "B\n", f"{SITE}/c.py": "C\n"})
    root = tmp_path / "pyc"
    earlier = image_folder(root, "a", ImageStack((base, shared), (base,)), [f"{SITE}/c.py"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / f"a.{TAG}.pyc").write_bytes(b"not ours")
    (earlier / SITE / f"a.{TAG}.pyc").symlink_to(outside / f"a.{TAG}.pyc")  # a pyc that is a link
    (earlier / SITE / "pkg").symlink_to(outside)  # a folder that is a link
    new = root / ("b" * 64)
    (new / SITE).mkdir(parents=True)
    escape = tmp_path / "escape"
    escape.mkdir()
    (new / SITE / "pkg").symlink_to(escape)  # where a seeded pyc would go, a link out
    done = seed(root, new, ImageStack((base, shared), (base,)), layers)
    assert seeded_names(new) == {f"{SITE}/c.{TAG}.pyc"} and done.files == 1
    assert not (new / SITE / f"a.{TAG}.pyc").exists() and list(escape.iterdir()) == []


def test_damaged_or_foreign_folders_are_skipped_never_fatal(tmp_path: Path) -> None:
    layers = Layers(tmp_path)
    base = layers.make("base", {})
    shared = layers.make("shared", {f"{SITE}/a.py": "A\n"})
    root = tmp_path / "pyc"
    for name, text in (("c", "{not json"), ("d", json.dumps({"diff_ids": ["sha256:x"], "base": []}))):
        folder = root / (name * 64)
        folder.mkdir(parents=True)
        compiled(folder, f"{SITE}/a.py")
        (folder / STACK_FILE).write_text(text)
    (root / "not-an-image").mkdir()
    (root / ("e" * 64)).write_text("a file")
    new = root / ("b" * 64)
    new.mkdir()
    assert seed(root, new, ImageStack((base, shared), (base,)), layers).files == 0

    def unreadable(_: str) -> Path:
        raise PermissionError(13, "Permission denied")

    other = tmp_path / "other-cache"
    image_folder(other, "a", ImageStack((base, shared), (base,)), [f"{SITE}/a.py"])
    (other / ("b" * 64)).mkdir()
    assert seed(other, other / ("b" * 64), ImageStack((base, shared), (base,)), unreadable).files == 0, "not ours"
    assert seed(other, other / ("b" * 64), ImageStack((base, shared), (base,)), layers).files == 1


@pytest.mark.skipif(os.getuid() != 0, reason="making another user's files takes root")
def test_another_users_folders_pycs_and_listings_are_never_taken(tmp_path: Path) -> None:
    """In a cache shared by a group, bytecode is code: only this user's own is seeded from."""
    layers = Layers(tmp_path)
    base = layers.make("base", {})
    shared = layers.make("shared", {f"{SITE}/a.py": "A\n", f"{SITE}/b.py": "B\n"})
    root = tmp_path / "pyc"
    theirs = image_folder(root, "a", ImageStack((base, shared), (base,)), [f"{SITE}/a.py", f"{SITE}/b.py"])
    os.chown(theirs / SITE / f"a.{TAG}.pyc", 4321, 4321)
    new = root / ("b" * 64)
    new.mkdir()
    assert seeded_names(new) == set()
    assert seed(root, new, ImageStack((base, shared), (base,)), layers).files == 1
    assert seeded_names(new) == {f"{SITE}/b.{TAG}.pyc"}, "their pyc in my folder is not taken"
    shutil.rmtree(new)
    os.chown(theirs, 4321, 4321)
    later = root / ("c" * 64)
    later.mkdir()
    assert seed(root, later, ImageStack((base, shared), (base,)), layers).files == 0, "nor their folder"
    listing = root / LISTINGS_DIR / f"{shared.removeprefix('sha256:')}.json"
    os.chown(listing, 4321, 4321)
    os.chown(theirs, os.getuid(), os.getgid())
    last = root / ("d" * 64)
    last.mkdir()
    assert seed(root, last, ImageStack((base, shared), (base,)), lambda _: None).files == 0, "nor their listing"


def test_listings_are_kept_so_a_layer_tar_is_read_once(tmp_path: Path) -> None:
    layers = Layers(tmp_path)
    base = layers.make("base", {})
    shared = layers.make("shared", {f"{SITE}/a.py": "A\n"})
    root = tmp_path / "pyc"
    image_folder(root, "a", ImageStack((base, shared), (base,)), [f"{SITE}/a.py"])
    new = root / ("b" * 64)
    new.mkdir()
    assert seed(root, new, ImageStack((base, shared), (base,)), layers).files == 1
    kept = root / LISTINGS_DIR / f"{shared.removeprefix('sha256:')}.json"
    assert kept.is_file()
    later = root / ("c" * 64)
    later.mkdir()
    assert seed(root, later, ImageStack((base, shared), (base,)), lambda _: None).files == 1, "no tar needed"
    data = json.loads(kept.read_text())
    data["diff_id"] = base  # a listing that names another layer than its file's is not believed
    kept.write_text(json.dumps(data))
    last = root / ("d" * 64)
    last.mkdir()
    assert seed(root, last, ImageStack((base, shared), (base,)), lambda _: None).files == 0


def test_a_whiteout_lists_as_the_path_it_removes(tmp_path: Path) -> None:
    layers = Layers(tmp_path)
    diff_id = layers.make("over", {"x/.wh.gone.py": "", "y/.wh..wh..opq": "", "y/kept.py": "1\n"})
    listing = dict(list_layer(layers.tars[diff_id]))
    assert listing["x/gone.py"] == "w" and listing["y"] == "q" and listing["y/kept.py"] == "f"


def test_a_pyc_freed_from_one_folder_stays_in_the_other(tmp_path: Path) -> None:
    layers = Layers(tmp_path)
    base = layers.make("base", {})
    shared = layers.make("shared", {f"{SITE}/a.py": "A\n"})
    root = tmp_path / "pyc"
    earlier = image_folder(root, "a", ImageStack((base, shared), (base,)), [f"{SITE}/a.py"])
    before = (earlier / SITE / f"a.{TAG}.pyc").read_bytes()
    new = root / ("b" * 64)
    new.mkdir()
    seed(root, new, ImageStack((base, shared), (base,)), layers)
    remove_tree(earlier)  # as gc removes a folder whose image is gone
    assert (new / SITE / f"a.{TAG}.pyc").read_bytes() == before


def test_the_layer_tars_are_found_in_the_layer_store_and_the_bases(tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "layers")
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "m.py").write_text("M = 1\n")
    made = store.put("k" * 64, lambda out: write_layer(tree, out, EPOCH))
    bases = tmp_path / "bases"
    bases.mkdir()
    based = write_layer(tree, bases / "debian.tar", EPOCH + 1)
    (bases / "debian.json").write_text(json.dumps({"diff-id": based.diff_id}))
    tars = LayerTars(tmp_path / "layers", bases)
    assert tars(made.diff_id) == made.tar and tars(based.diff_id) == bases / "debian.tar"
    assert tars("sha256:" + "0" * 64) is None
    damaged = LayerTars(tmp_path / "layers", bases)
    made.tar.write_bytes(b"other bytes")
    assert damaged(made.diff_id) is None, "a store entry is verified as LayerStore.get verifies it"


def test_a_folder_is_seeded_before_its_compile_starts_never_while_one_runs(tmp_path: Path) -> None:
    layers = Layers(tmp_path)
    base = layers.make("base", {})
    shared = layers.make("shared", {f"{SITE}/a.py": "A\n"})
    root = tmp_path / "pyc"
    image_folder(root, "a", ImageStack((base, shared), (base,)), [f"{SITE}/a.py"])
    client = FakeDockerClient()
    image = "sha256:" + "b" * 64
    client.api.add_image(image, [base, shared], [base])
    launcher = DockerLauncher(client, bytecode_root=root, layer_tars=layers)
    started = launcher.compile_bytecode(image, "1000:1000")
    assert started is not None and started.seeded is not None and started.seeded.files == 1
    assert (root / ("b" * 64) / SITE / f"a.{TAG}.pyc").is_file() and client.containers.started
    assert launcher.compile_bytecode(image, "1000:1000") is None, "compiling already"
    assert client.api.inspected == [image], "not seeded again while its compile runs (a run's call costs nothing)"
    other = "sha256:" + "c" * 64
    client.api.add_image(other, [base, shared], [])  # no base label: not an envlock image
    started = launcher.compile_bytecode(other, "1000:1000")
    assert started is not None and started.seeded is None and not (root / ("c" * 64) / STACK_FILE).exists()


def test_a_new_compile_stops_this_users_compiles_it_supersedes_and_they_resume_seeded(tmp_path: Path) -> None:
    """A compile of an image sharing a layer above the base with the new one is stopped (the new one does that
    work); it resumes after its image's next run, then seeded from the new folder. Others are left running."""
    layers = Layers(tmp_path)
    base = layers.make("base", {})
    torch = layers.make("torch", {f"{SITE}/torch.py": "T\n"})
    one, two = layers.make("one", {f"{SITE}/six.py": "1\n"}), layers.make("two", {f"{SITE}/six.py": "22\n"})
    elsewhere = layers.make("elsewhere", {f"{SITE}/other.py": "O\n"})
    client = FakeDockerClient()
    first, second, unrelated = ("sha256:" + c * 64 for c in "abc")
    client.api.add_image(first, [base, torch, one], [base])
    client.api.add_image(second, [base, torch, two], [base])
    client.api.add_image(unrelated, [base, elsewhere], [base])
    root = tmp_path / "pyc"
    launcher = DockerLauncher(client, bytecode_root=root, layer_tars=layers)
    assert launcher.compile_bytecode(first, "1000:1000") is not None
    assert launcher.compile_bytecode(unrelated, "1000:1000") is not None
    compiled(root / ("a" * 64), f"{SITE}/torch.py")  # what the first compile wrote before it was stopped
    client.containers.created.clear()
    started = launcher.compile_bytecode(second, "1000:1000")
    assert started is not None and started.seeded is not None and started.seeded.files == 1
    assert client.containers.killed == [f"envlock-pyc-{'a' * 12}-{os.getuid()}"], "only the superseded compile"
    compiled(root / ("b" * 64), f"{SITE}/six.py")
    client.containers.end(f"envlock-pyc-{'b' * 12}-{os.getuid()}")
    resumed = launcher.compile_bytecode(first, "1000:1000")  # after a run of the first image
    assert resumed is not None and resumed.seeded is not None and resumed.seeded.files == 0, "six.py differs"
    assert len(client.containers.killed) == 1, "the second image's compile had ended: nothing to stop"

"""Lineage through the CLI and the fakes: a three-step project (prepare → train → evaluate) whose runs are linked
by the content hashes of what they read and wrote, told back to the raw input, re-run as one chain, and reported."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from envlock.run.records import RunRecord, RunStore
from envlock.signing import generate_key
from tests.unit import test_cli_commands
from tests.unit.test_cli_commands import World

world = test_cli_commands.world

Read = Callable[[str], bytes | None]


def _prepare(read: Read) -> dict[str, bytes]:
    return {"data/clean.csv": b"clean\n" + (read("data/raw.csv") or b"")}


def _train(read: Read) -> dict[str, bytes]:
    return {"out/model.pkl": b"model " + hashlib.sha256(read("data/clean.csv") or b"").hexdigest().encode()}


def _evaluate(read: Read) -> dict[str, bytes]:
    seen = (read("data/clean.csv") or b"") + (read("out/model.pkl") or b"")
    return {"out/metrics.json": json.dumps({"accuracy": len(seen) / 1000}).encode()}


STEPS = {
    "prepare": ("-i", "data/raw.csv", "-o", "data/clean.csv", "--", "python", "prepare.py"),
    "train": ("-i", "data/clean.csv", "-o", "out/model.pkl", "--", "python", "train.py"),
    "evaluate": ("-i", "data/clean.csv", "-i", "out/model.pkl", "-o", "out/metrics.json", "--", "python",
                 "evaluate.py"),
}  # fmt: skip


def three_steps(world: World, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """The issue's project run once: prepare, train, evaluate; their run ids by step."""
    world.launcher.writes = {}
    world.launcher.scripts = {"prepare.py": _prepare, "train.py": _train, "evaluate.py": _evaluate}
    (world.project / "data").mkdir(exist_ok=True)
    (world.project / "data" / "raw.csv").write_bytes(b"x,y\n1,2\n3,4\n")
    ids = {}
    for name, args in STEPS.items():
        code, _, said = world(capsys, "run", "-C", str(world.project), *args)
        assert code == 0, said
        ids[name] = newest(world).run_id
    return ids


def newest(world: World) -> RunRecord:
    """The run started last (run ids sort by the second only)."""
    return max(RunStore(world.project).all(), key=lambda record: record.started)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_runs_are_linked_by_content_when_they_start(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    ids = three_steps(world, capsys)
    store = RunStore(world.project)
    prepare, train, evaluate = (store.load(ids[name]) for name in ("prepare", "train", "evaluate"))
    clean, model = _sha(world.project / "data/clean.csv"), _sha(world.project / "out/model.pkl")
    assert prepare.links == ()
    assert [(link.input, link.run, link.output, link.sha256) for link in train.links] == [
        ("data/clean.csv", prepare.run_id, "data/clean.csv", clean)
    ]
    assert [(link.input, link.run) for link in evaluate.links] == [
        ("data/clean.csv", prepare.run_id),
        ("out/model.pkl", train.run_id),
    ]
    assert all(not r.tainted for r in (prepare, train, evaluate))
    code, out, _ = world(capsys, "runs", "-C", str(world.project), "show", evaluate.run_id)
    assert code == 0
    assert f"link      data/clean.csv <- run {prepare.run_id} (data/clean.csv, sha256 {clean[:12]})" in out
    assert f"link      out/model.pkl <- run {train.run_id} (out/model.pkl, sha256 {model[:12]})" in out


def test_a_moved_file_keeps_its_link_and_an_edited_one_loses_it(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = three_steps(world, capsys)
    (world.project / "data/clean.csv").rename(world.project / "data/renamed.csv")
    code, _, _ = world(capsys, "run", "-C", str(world.project), "-i", "data/renamed.csv", "--", "python", "x.py")
    moved = newest(world)
    assert code == 0 and [(lk.input, lk.run, lk.output) for lk in moved.links] == [
        ("data/renamed.csv", ids["prepare"], "data/clean.csv")
    ]
    (world.project / "data/renamed.csv").write_bytes(b"edited by hand\n")
    code, _, _ = world(capsys, "run", "-C", str(world.project), "-i", "data/renamed.csv", "--", "python", "x.py")
    assert code == 0 and newest(world).links == ()


def test_an_input_edited_while_the_run_ran_taints_the_record(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    (world.project / "data").mkdir()
    (world.project / "data" / "raw.csv").write_bytes(b"before\n")
    world.launcher.writes = {"data/raw.csv": b"another process wrote this meanwhile\n"}
    code, _, said = world(capsys, "run", "-C", str(world.project), "-i", "data", "--", "python", "prepare.py")
    record = newest(world)
    assert code == 0, said
    assert record.tainted == {"data/raw.csv": "changed"}
    assert record.inputs is not None and record.inputs.files["data/raw.csv"] == hashlib.sha256(b"before\n").hexdigest()
    code, out, _ = world(capsys, "runs", "-C", str(world.project), "show", record.run_id)
    assert code == 0 and "TAINTED   input data/raw.csv changed while the run ran" in out


def test_lineage_of_a_file_tells_the_dag_back_to_the_raw_input(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = three_steps(world, capsys)
    raw, clean = _sha(world.project / "data/raw.csv"), _sha(world.project / "data/clean.csv")
    metrics = _sha(world.project / "out/metrics.json")
    code, out, _ = world(capsys, "lineage", "out/metrics.json", "-C", str(world.project))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == f"lineage of out/metrics.json (sha256 {metrics[:12]}): 3 steps, 1 raw input"
    assert lines[1] == f"raw input data/raw.csv  sha256 {raw}"
    assert f"step 1  run {ids['prepare']}  finished, exit 0" in lines
    assert f"step 3  run {ids['evaluate']}  finished, exit 0" in lines
    assert f"  read     data/raw.csv  sha256 {raw}  raw" in lines
    assert f"  read     data/clean.csv  sha256 {clean}  from step 1 (data/clean.csv)" in lines
    assert "  command  python evaluate.py" in lines and "  commit   not in git" in lines
    code, out, _ = world(capsys, "lineage", ids["evaluate"], "-C", str(world.project), "--json")
    document = json.loads(out)
    assert code == 0 and [s["run_id"] for s in document["steps"]] == [ids[n] for n in ("prepare", "train", "evaluate")]
    assert document["steps"][2]["parents"] == [ids["prepare"], ids["train"]]
    assert document["raw_inputs"] == [{"path": "data/raw.csv", "sha256": raw, "read_by": [ids["prepare"]]}]
    assert sorted((e["from"], e["to"]) for e in document["edges"]) == sorted(
        [(ids["prepare"], ids["train"]), (ids["prepare"], ids["evaluate"]), (ids["train"], ids["evaluate"])]
    )
    # Fan-out: the lineage of the model is two steps; prepare's output feeds both train and evaluate.
    code, out, _ = world(capsys, "lineage", "out/model.pkl", "-C", str(world.project), "--json")
    assert code == 0 and [s["run_id"] for s in json.loads(out)["steps"]] == [ids["prepare"], ids["train"]]


def test_lineage_of_what_no_run_wrote_is_refused_with_one_line(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    three_steps(world, capsys)
    code, out, err = world(capsys, "lineage", "data/raw.csv", "-C", str(world.project))
    raw = _sha(world.project / "data/raw.csv")
    assert code == 2 and out == ""
    refusal = f"error: no run of {world.project} wrote data/raw.csv as it is now (sha256 {raw[:12]})"
    assert err.splitlines()[0] == refusal
    code, _, err = world(capsys, "lineage", "nothing-here", "-C", str(world.project))
    assert code == 2 and err.startswith("error: 'nothing-here' is not a file or a run of this project\n")


def test_a_chain_whose_parent_record_is_gone_says_so(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    ids = three_steps(world, capsys)
    store = RunStore(world.project)
    (store.directory(ids["train"]) / "record.json").write_text("{}")
    code, out, _ = world(capsys, "lineage", ids["evaluate"], "-C", str(world.project))
    assert code == 0 and out.splitlines()[0].endswith(": 2 steps, 1 raw input")
    assert f"lost: run {ids['train']} (linked, but its record is gone or unreadable)" in out
    model = _sha(world.project / "out/model.pkl")
    assert f"  read     out/model.pkl  sha256 {model}  from run {ids['train']} (lost)" in out


def _declare_params(world: World, files: str) -> None:
    pyproject = world.project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + f"\n[tool.envlock]\nparams = {files}\n")


def test_params_from_files_and_the_command_line_are_recorded_key_by_key(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    (world.project / "config").mkdir()
    (world.project / "config/train.yaml").write_text(
        "optimizer:\n  lr: 0.01\n  name: adam\nepochs: 5\nlayers: [64, 32]\n"
    )
    (world.project / "config/extra.json").write_text('{"dropout": 0.1, "epochs": 7}')
    (world.project / "config/data.toml").write_text('split = "80/20"\n[augment]\nflip = true\n')
    _declare_params(world, '["config/train.yaml", "config/extra.json", "config/data.toml"]')
    code, _, said = world(capsys, "run", "-C", str(world.project), "--param", "epochs=3", "-p", "tag=a=b", "--", "t")
    record = newest(world)
    assert code == 0, said
    assert record.params is not None
    assert dict(record.params.values) == {
        "augment.flip": "true", "dropout": "0.1", "epochs": "3", "layers[0]": "64", "layers[1]": "32",
        "optimizer.lr": "0.01", "optimizer.name": "adam", "split": "80/20", "tag": "a=b",
    }  # fmt: skip
    assert dict(record.params.given) == {"epochs": "3", "tag": "a=b"}
    assert record.params.files == {
        name: _sha(world.project / name) for name in ("config/train.yaml", "config/extra.json", "config/data.toml")
    }
    launched = world.launcher.launched[-1].environment["ENVLOCK_PARAMS"]
    assert json.loads(launched) == dict(record.params.values) and record.environment["ENVLOCK_PARAMS"] == launched
    code, out, _ = world(capsys, "runs", "-C", str(world.project), "show", record.run_id)
    assert code == 0 and "param     optimizer.lr = 0.01" in out and "params    config/train.yaml  sha256 " in out


def test_diff_names_the_parameter_that_changed(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    (world.project / "config").mkdir()
    (world.project / "config/train.yaml").write_text("optimizer:\n  lr: 0.01\nepochs: 5\n")
    _declare_params(world, '["config/train.yaml"]')
    world(capsys, "run", "-C", str(world.project), "--", "python", "train.py")
    first = newest(world).run_id
    (world.project / "config/train.yaml").write_text("optimizer:\n  lr: 0.02\nepochs: 5\n")
    world(capsys, "run", "-C", str(world.project), "-p", "seed_split=2", "--", "python", "train.py")
    second = newest(world).run_id
    code, out, _ = world(capsys, "diff", first, second, "-C", str(world.project))
    assert code == 0
    assert "  param optimizer.lr: 0.01 -> 0.02" in out.splitlines() and "  param seed_split: absent -> 2" in out
    code, out, _ = world(capsys, "diff", first, second, "-C", str(world.project), "--json")
    assert json.loads(out)["params"] == {
        "optimizer.lr": {"old": "0.01", "new": "0.02"}, "seed_split": {"old": None, "new": "2"}
    }  # fmt: skip


def test_bad_params_are_refused_before_anything_runs(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = world(capsys, "run", "-C", str(world.project), "--param", "no-value", "--", "t")
    assert code == 125 and err.splitlines()[0] == "error: --param 'no-value' is not KEY=VALUE"
    (world.project / "config").mkdir()
    (world.project / "config/train.yaml").write_text("optimizer: [unclosed\n")
    _declare_params(world, '["config/train.yaml"]')
    code, _, err = world(capsys, "run", "-C", str(world.project), "--", "t")
    assert code == 125 and err.startswith("error: params file config/train.yaml is not valid YAML: ")
    assert "(elsewhere 20: " in err
    (world.project / "config/train.yaml").write_text("- just\n- a list\n")
    code, _, err = world(capsys, "run", "-C", str(world.project), "--", "t")
    assert code == 125 and err.startswith("error: params file config/train.yaml must hold a table of keys, not list")
    assert world.launcher.launched == [] and RunStore(world.project).all() == []


def test_the_chain_reproduces_step_by_step_under_one_chain_id(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    ids = three_steps(world, capsys)
    code, out, said = world(capsys, "reproduce", "--chain", "out/metrics.json", "-C", str(world.project))
    assert code == 0, out + said
    lines = out.splitlines()
    store = RunStore(world.project)
    reruns = sorted((r for r in store.all() if r.chain), key=lambda r: r.started)
    assert [r.reproduces for r in reruns] == [ids["prepare"], ids["train"], ids["evaluate"]]
    chain = reruns[0].chain
    assert chain is not None and {r.chain for r in reruns} == {chain}
    assert lines == [
        f"step 1 REPRODUCED: run {reruns[0].run_id} re-ran {ids['prepare']} (python prepare.py)",
        f"step 2 REPRODUCED: run {reruns[1].run_id} re-ran {ids['train']} (python train.py)",
        f"step 3 REPRODUCED: run {reruns[2].run_id} re-ran {ids['evaluate']} (python evaluate.py)",
        f"chain {chain}: REPRODUCED (3 steps)",
    ]
    # Each re-run was fed its parents' outputs from this re-run, and linked to them.
    assert [(lk.input, lk.run) for lk in reruns[2].links] == [
        ("data/clean.csv", reruns[0].run_id),
        ("out/model.pkl", reruns[1].run_id),
    ]
    kept = json.loads((world.project / ".envlock" / "chains" / f"{chain}.json").read_text())
    assert kept["verdict"] == "REPRODUCED" and kept["first_divergent"] is None and len(kept["steps"]) == 3
    assert [p.name for p in (world.project / ".envlock" / "chains").iterdir()] == [f"{chain}.json"], "no staging left"
    # The original lineage still points at the originals: re-runs do not take over the links.
    code, out, _ = world(capsys, "lineage", "out/metrics.json", "-C", str(world.project), "--json")
    assert [s["run_id"] for s in json.loads(out)["steps"]] == [ids["prepare"], ids["train"], ids["evaluate"]]


def test_an_edited_raw_input_stops_the_chain_at_step_one_naming_its_output(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = three_steps(world, capsys)
    (world.project / "data/raw.csv").write_bytes(b"x,y\n1,2\n3,5\n")
    code, out, _ = world(capsys, "reproduce", "--chain", ids["evaluate"], "-C", str(world.project))
    assert code == 16, out
    lines = out.splitlines()
    assert lines[0].startswith("step 1 NOT REPRODUCED: run ") and lines[0].endswith(
        f"re-ran {ids['prepare']} (python prepare.py)"
    )
    assert "    output data/clean.csv: differs" in lines and "    changed: input data/raw.csv: changed" in lines
    assert f"step 2 NOT RUN: run {ids['train']} was not re-run (python train.py)" in lines
    assert f"step 3 NOT RUN: run {ids['evaluate']} was not re-run (python evaluate.py)" in lines
    assert lines[-1].endswith(
        f": NOT REPRODUCED: first divergent step 1 (run {ids['prepare']}): data/clean.csv differs "
        "(row 3 col 1: 4 -> 5 (by +1))"
    ), "the first divergent file, and the value in it that moved"
    assert len([r for r in RunStore(world.project).all() if r.chain]) == 1, "the chain stopped after step 1"
    chain = lines[-1].split()[1].rstrip(":")
    code, text, _ = world(capsys, "report", "--chain", ids["evaluate"], "-C", str(world.project))
    assert code == 0
    rows = [line.split() for line in text.splitlines()]
    assert rows.count(["last", "chain", "re-run", f"{chain}:", "NOT", "RUN"]) == 2, "no new run to name for steps 2, 3"


def test_a_step_that_no_longer_reproduces_is_named_with_its_file(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = three_steps(world, capsys)
    world.launcher.scripts["train.py"] = lambda read: {"out/model.pkl": b"another model\n"}
    code, out, _ = world(capsys, "reproduce", "--chain", "out/metrics.json", "-C", str(world.project))
    assert code == 16
    lines = out.splitlines()
    assert lines[0].startswith("step 1 REPRODUCED") and lines[1].startswith("step 2 NOT REPRODUCED")
    assert f"first divergent step 2 (run {ids['train']}): out/model.pkl differs" in lines[-1]


def _signed_three_steps(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> tuple[dict[str, str], Path]:
    key = generate_key(tmp_path / "keys" / "alice.pem")
    world.wiring.environ = {"ENVLOCK_SIGNING_KEY": str(key.path)}
    ids = three_steps(world, capsys)
    return ids, tmp_path / "keys" / "alice.pem.pub"


def test_the_chain_report_tells_each_step_from_its_verified_record(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ids, public = _signed_three_steps(world, capsys, tmp_path)
    code, out, _ = world(capsys, "reproduce", "--chain", "out/metrics.json", "-C", str(world.project))
    assert code == 0, out
    chain = out.splitlines()[-1].split()[1].rstrip(":")
    code, text, _ = world(
        capsys, "report", "--chain", "out/metrics.json", "-C", str(world.project), "--key", str(public)
    )
    assert code == 0
    lines = text.splitlines()
    assert lines[1] == f"[VERIFIED] 3 steps: 3 VERIFIED; last chain re-run {chain}: REPRODUCED"
    assert "Step 2: python train.py" in lines and f"  {chain}: REPRODUCED" in lines
    # Without the key: every step's banner is UNTRUSTED KEY, and the chain's with it.
    code, text, _ = world(capsys, "report", "--chain", ids["evaluate"], "-C", str(world.project))
    assert code == 0 and text.splitlines()[1].startswith("[UNTRUSTED KEY] 3 steps: 3 UNTRUSTED KEY")
    # A record edited after its signature: that step fails verification, and the chain shows the signed values.
    run_dir = RunStore(world.project).directory(ids["train"])
    record = json.loads((run_dir / "record.json").read_text())
    record["command"] = ["python", "forged.py"]
    (run_dir / "record.json").write_text(json.dumps(record))
    page = tmp_path / "chain.html"
    code, _, _ = world(capsys, "report", "--chain", ids["evaluate"], "-C", str(world.project), "--key", str(public),
                       "--html", "-o", str(page))  # fmt: skip
    html = page.read_text()
    assert code == 0 and 'id="verdict" data-state="VERIFICATION FAILED"' in html
    assert "forged.py" not in html and "Step 2: python train.py — VERIFICATION FAILED" in html
    assert html.count('<g class="step"') == 3 and html.count('<g class="raw"') == 1
    assert html.count('<line class="edge"') == 4, "raw→prepare, prepare→train, prepare→evaluate, train→evaluate"
    assert "<script" not in html and "http://" not in html and "https://" not in html and " src=" not in html
    assert "default-src 'none'" in html


@pytest.mark.browser
def test_the_chain_report_renders_in_headless_chromium_with_no_request(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it)")
    _, public = _signed_three_steps(world, capsys, tmp_path)
    page = tmp_path / "chain.html"
    code, _, _ = world(capsys, "report", "--chain", "out/metrics.json", "-C", str(world.project), "--key", str(public),
                       "--html", "-o", str(page))  # fmt: skip
    assert code == 0
    netlog = tmp_path / "netlog.json"
    done = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", f"--log-net-log={netlog}", "--dump-dom",
         page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert 'data-state="VERIFIED"' in dom and '<svg id="chain-graph"' in dom
    assert dom.count('<g class="step" data-state="VERIFIED">') == 3 and dom.count('<line class="edge"') == 4
    assert "step 3: python evaluate.py" in dom
    # The browser's network log: chromium's own background traffic (update checks, its clock) has no initiator
    # origin; a request the page made would carry the page's ("null" for a file). None did.
    events = json.loads(netlog.read_text())["events"]
    initiators = {e["params"].get("initiator") for e in events if "url" in e.get("params", {})}
    assert initiators <= {None, "not an origin"}, initiators

"""Slurm through its own commands (sbatch, scontrol, squeue, scancel): submit held, release, ask a job's state."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from envlock.errors import SchedulerError

Command = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]

# Slurm job states (squeue/scontrol JobState) after which the job will never run envlock's task again.
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)


def run_slurm_tool(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run one Slurm command; a missing program is a SchedulerError, not a traceback."""
    try:
        return subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError as exc:
        raise SchedulerError(
            f"{args[0]} is not installed: this machine is not a Slurm submit host",
            hint="install the Slurm client (Debian: slurm-client) and its slurm.conf, or submit from a login node",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise SchedulerError(f"{args[0]} did not answer within 60 s") from exc


@dataclass(frozen=True)
class JobState:
    """What Slurm says about a job: its state (PENDING, RUNNING, COMPLETED, …), reason and nodes."""

    state: str
    reason: str = ""
    nodes: str = ""
    exit_code: str = ""

    @property
    def final(self) -> bool:
        """True when the job will not run (again)."""
        return self.state in FINAL_STATES


class Slurm:
    """The Slurm commands envlock uses; `command` runs them (a fake in unit tests, subprocess otherwise)."""

    def __init__(self, command: Command = run_slurm_tool) -> None:
        self.command = command

    def _call(self, what: str, args: list[str], hint: str = "") -> str:
        done = self.command(args)
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise SchedulerError(f"{what}: {said[-1] if said else f'{args[0]} exited {done.returncode}'}", hint=hint)
        return done.stdout

    def ping(self) -> None:
        """Check that the controller answers, before anything is built or written."""
        self._call("Slurm's controller does not answer", ["scontrol", "ping"])

    def submit_held(self, script: Path, options: Sequence[str]) -> str:
        """Submit a batch script on hold (it cannot start before envlock has recorded its id); the job id."""
        out = self._call(
            "sbatch refused the job",
            ["sbatch", "--parsable", "--hold", *options, str(script)],
            hint="the options between --slurm and -- go to sbatch as given: check them "
            "(`sinfo` lists the partitions, `sbatch --help` the options)",
        )
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise SchedulerError(f"sbatch answered {out.strip()!r} where a job id was expected")
        return job_id

    def release(self, job_id: str) -> None:
        """Let a held job be scheduled."""
        self._call(f"could not release job {job_id}", ["scontrol", "release", job_id])

    def cancel(self, job_id: str) -> None:
        """Cancel a job (queued or running)."""
        self._call(f"could not cancel job {job_id}", ["scancel", job_id])

    def hostnames(self, nodelist: str) -> list[str]:
        """A compressed node list (`gpu[01-04]`) spelled out, in Slurm's order (rank order)."""
        out = self._call(f"could not expand node list {nodelist}", ["scontrol", "show", "hostnames", nodelist])
        return out.split()

    def node_address(self, name: str) -> str:
        """The address other nodes reach `name` at (NodeAddr, which defaults to its name)."""
        out = self._call(f"could not ask Slurm about node {name}", ["scontrol", "show", "node", "--oneliner", name])
        found = re.search(r"\bNodeAddr=(\S+)", out)
        return found.group(1) if found else name

    def state(self, job_id: str) -> JobState | None:
        """The job's state from the controller; None when Slurm no longer knows the job (MinJobAge passed)."""
        done = self.command(["scontrol", "show", "job", "--oneliner", job_id])
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                return None
            said = done.stderr.strip().splitlines()
            raise SchedulerError(f"could not ask Slurm about job {job_id}: {said[-1] if said else 'no answer'}")
        fields = dict(re.findall(r"(\w+)=(\S*)", done.stdout))
        state = fields.get("JobState", "UNKNOWN")
        return JobState(state, fields.get("Reason", ""), fields.get("NodeList", ""), fields.get("ExitCode", ""))


def batch_script(*, job_name: str, project_dir: Path, run_dir: Path, task: Sequence[str]) -> str:
    """The batch script: envlock's defaults as #SBATCH lines (the user's sbatch options on the command line win),
    then one task per allocated node (srun) that runs the pinned image there and keeps its record."""
    return "\n".join(
        [
            "#!/bin/bash",
            f"#SBATCH --job-name={job_name}",
            f"#SBATCH --chdir={project_dir}",
            f"#SBATCH --output={run_dir}/slurm-%j.out",
            "#SBATCH --ntasks-per-node=1",
            "# Written by `envlock submit --slurm`: one task per node probes that node, checks it against the lock,",
            "# restores the pinned image by ID (local engine, else the registry by digest, else a rebuild from the",
            "# lock), runs the command in it and writes its record beside this script (rank 0: record.json, the",
            "# other nodes: nodes/<rank>/). A node whose task fails stops the others (--kill-on-bad-exit).",
            "set -euo pipefail",
            'exec srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 '
            f"--kill-on-bad-exit=1 {shlex.join(task)}",
            "",
        ]
    )

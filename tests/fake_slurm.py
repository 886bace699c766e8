"""A fake Slurm for tests: ``sbatch``, ``sacct``, ``squeue``, ``scontrol``, ``srun`` and friends as small
Python programs that run every job locally, at once, and record their arguments.

``install(bin_dir, state_dir)`` writes the programs; put ``bin_dir`` first on ``PATH`` and export
``FAKE_SLURM_STATE=state_dir``. ``FAKE_SLURM_FAIL_FIRST="simulate=OUT_OF_MEMORY,bin=TIMEOUT"`` ends the first
job of each named rule (from the plugin's ``--comment rule_<name>...``) in that state without running it, as
Slurm does with a job past its memory or time. ``sbatch_calls(state_dir)`` then returns the argument lists
of every submission, and ``srun_calls(state_dir)`` those of every job step. ``sacct`` answers once one of
the run's running jobs has ended (or after ``SACCT_WAIT_S``), so that a test does not sit out the executor
plugin's poll interval, which grows by 10 s per poll while nothing ends.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

ACCOUNT = "xmm_test"
SACCT_WAIT_S = 30.0  # below the plugin's 60 s timeout of a status query

_COMMON = r'''
import fcntl, json, os, shlex, signal, subprocess, sys
from pathlib import Path

STATE = Path(os.environ["FAKE_SLURM_STATE"])
JOBS = STATE / "jobs"
JOBS.mkdir(parents=True, exist_ok=True)


def record(name):
    with open(STATE / f"{name}.jsonl", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps(sys.argv[1:]) + "\n")


def option(args, *names):
    """The value of the first of ``names`` in ``args`` (``--opt value`` or ``--opt=value``)."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None


def jobs():
    """(job id, job name, state) of every submitted job."""
    for meta in sorted(JOBS.glob("*.json"), key=lambda p: int(p.stem)):
        job = json.loads(meta.read_text())
        rc = JOBS / f"{meta.stem}.rc"
        if rc.exists():
            code = rc.read_text().strip()
            state = {"0": "COMPLETED", "cancelled": "CANCELLED", "TIMEOUT": "TIMEOUT",
                     "OUT_OF_MEMORY": "OUT_OF_MEMORY"}.get(code, "FAILED")
        else:
            state = "RUNNING"
        yield meta.stem, job["name"], state
'''

_SBATCH = r'''
record("sbatch")
args = sys.argv[1:]
with open(STATE / "counter", "a+") as fh:
    fcntl.flock(fh, fcntl.LOCK_EX)
    fh.seek(0)
    job_id = int(fh.read() or "1000") + 1
    fh.seek(0)
    fh.truncate()
    fh.write(str(job_id))
name = option(args, "--job-name", "-J") or "sbatch"
script = option(args, "--wrap")
if script is None:
    script = sys.stdin.read()  # the plugin's pass-command-as-script mode: the job script on stdin
log = Path((option(args, "--output", "-o") or "slurm-%j.out").replace("%j", str(job_id)))
workdir = option(args, "-D", "--chdir") or os.getcwd()
log.parent.mkdir(parents=True, exist_ok=True)
(JOBS / f"{job_id}.sh").write_text(script + "\n")
(JOBS / f"{job_id}.json").write_text(json.dumps({"name": name, "args": args}))
env = dict(os.environ, SLURM_JOB_ID=str(job_id), SLURM_JOBID=str(job_id), SLURM_JOB_NAME=name,
           SLURM_SUBMIT_DIR=os.getcwd(), SLURM_CLUSTER_NAME="fake")
rc = JOBS / f"{job_id}.rc"
comment = option(args, "--comment") or ""
for entry in filter(None, os.environ.get("FAKE_SLURM_FAIL_FIRST", "").split(",")):
    rule, state = entry.split("=")
    marker = STATE / f"failed_{rule}"
    if comment == f"rule_{rule}" or comment.startswith(f"rule_{rule}_wildcards"):
        with open(STATE / "fail.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            first = not marker.exists()
            marker.touch()
        if first:
            rc.write_text(state)
            print(job_id)
            sys.exit(0)
wrapper = f"sh {shlex.quote(str(JOBS / f'{job_id}.sh'))}; echo $? > {shlex.quote(str(rc))}.tmp && mv {shlex.quote(str(rc))}.tmp {shlex.quote(str(rc))}"
with open(log, "ab") as out:
    proc = subprocess.Popen(["sh", "-c", wrapper], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
(JOBS / f"{job_id}.pid").write_text(str(proc.pid))
print(job_id)
'''

_SACCT = r'''
import time
record("sacct")
args = sys.argv[1:]
name = option(args, "--name")
if name is None and any("Account" in arg for arg in args):
    print(ACCOUNT)  # the plugin guessing the account from recent jobs
    sys.exit(0)
# answer when one of the run's running jobs has ended (at most SACCT_WAIT_S later), as a busy cluster's
# accounting lags: the plugin then polls again at once instead of sitting out its growing interval
running = {job_id for job_id, job_name, state in jobs() if job_name == name and state == "RUNNING"}
deadline = time.monotonic() + SACCT_WAIT_S
while running and time.monotonic() < deadline and all(
        state == "RUNNING" for job_id, _, state in jobs() if job_id in running):
    time.sleep(0.1)
for job_id, job_name, state in jobs():
    if name is None or job_name == name:
        print(f"{job_id}|{state}")
'''

_SQUEUE = r'''
record("squeue")
name = option(sys.argv[1:], "--name")
for job_id, job_name, state in jobs():
    if name is None or job_name == name:
        print(f"{job_id}|{state}")
'''

_SCONTROL = r'''
record("scontrol")
if sys.argv[1:3] == ["show", "config"]:
    print("MinJobAge               = 300 sec")
'''

_SINFO = r'''
record("sinfo")
print("PARTITION")
print("cpu*")
print("gpu")
'''

_ACCOUNTS = r'''
record(Path(sys.argv[0]).name)
print(ACCOUNT)
'''

_SCANCEL = r'''
record("scancel")
for job_id in sys.argv[1:]:
    pid = JOBS / f"{job_id}.pid"
    if pid.exists():
        try:
            os.killpg(int(pid.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass
        (JOBS / f"{job_id}.rc").write_text("cancelled")
'''

_SRUN = r'''
record("srun")
args = sys.argv[1:]
while args and args[0].startswith("-"):
    flag = args.pop(0)
    if flag in ("-n", "-N", "-c", "-J", "--ntasks", "--nodes", "--cpus-per-task", "--job-name") and args:
        args.pop(0)  # an option given as two words
env = dict(os.environ, SLURM_NTASKS="1", SLURM_NPROCS="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
           SLURM_STEP_ID="0", SLURM_NODELIST="localhost", SLURM_JOB_NAME=os.environ.get("SLURM_JOB_NAME", "step"))
if not args:
    sys.exit("srun: no command given")
os.execvpe(args[0], args, env)
'''

_PROGRAMS = {
    "sbatch": _SBATCH, "sacct": _SACCT, "squeue": _SQUEUE, "scontrol": _SCONTROL, "sinfo": _SINFO,
    "sacctmgr": _ACCOUNTS, "sshare": _ACCOUNTS, "scancel": _SCANCEL, "srun": _SRUN,
}


def install(bin_dir: Path, state_dir: Path) -> dict[str, str]:
    """Write the fake Slurm programs into ``bin_dir``; return the environment variables that enable them."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name, body in _PROGRAMS.items():
        path = bin_dir / name
        constants = f"ACCOUNT = {ACCOUNT!r}\nSACCT_WAIT_S = {SACCT_WAIT_S!r}\n"
        path.write_text(f"#!{sys.executable}\n{_COMMON}\n{constants}{body}")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return {"FAKE_SLURM_STATE": str(state_dir)}


def calls(state_dir: Path, program: str) -> list[list[str]]:
    """The argument lists of every call of ``program``."""
    path = state_dir / f"{program}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def sbatch_calls(state_dir: Path) -> list[list[str]]:
    """The argument lists of every ``sbatch`` submission."""
    return calls(state_dir, "sbatch")


def srun_calls(state_dir: Path) -> list[list[str]]:
    """The argument lists of every ``srun`` job step."""
    return calls(state_dir, "srun")

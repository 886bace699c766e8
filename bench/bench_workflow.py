"""Workflow-scale figures: DAG build time and job count of a configuration (default: the reference
config/paper.yaml), and optionally the wall time of whole runs at several core counts.

    python bench/bench_workflow.py                      # dry run of config/paper.yaml
    python bench/bench_workflow.py --run-cores 1 2      # plus the embedded default run with 1 and 2 cores

Each run starts from an empty working directory, so it includes every stage (simulation to report).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str) -> tuple[float, str]:
    """Run the workflow of this checkout in ``workdir``; (wall seconds, combined output)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           *args]
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout + result.stderr


def job_count(output: str) -> int:
    """The total of the job-stats table of a Snakemake run or dry run."""
    totals = re.findall(r"^total\s+(\d+)$", output, flags=re.M)
    return int(totals[-1]) if totals else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configfile", default=str(REPO / "config" / "paper.yaml"),
                        help="configuration whose DAG is timed (default: config/paper.yaml)")
    parser.add_argument("--run-cores", type=int, nargs="*", default=[],
                        help="also run the embedded default config end to end with each of these core counts")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        seconds, output = snakemake(Path(tmp), "-n", "--configfile", args.configfile)
    print(f"DAG of {Path(args.configfile).name}: {job_count(output)} jobs, built in {seconds:.1f} s (dry run)")

    for cores in args.run_cores:
        with tempfile.TemporaryDirectory() as tmp:
            seconds, output = snakemake(Path(tmp), "--cores", str(cores), "--configfile", str(REPO / "config.yaml"))
        print(f"default run, --cores {cores}: {job_count(output)} jobs in {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()

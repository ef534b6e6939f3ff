"""How fast the real control plane starts and what it costs at rest.

    python -m bench.testenv [--runs 3] [--idle 20]

Starts etcd + kube-apiserver ``--runs`` times (each from nothing: new PKI, empty etcd) and
reports seconds to /readyz; on the last run waits ``--idle`` seconds and reads the resident
memory and CPU time of both processes from /proc.
"""

import argparse
import os
from pathlib import Path

import anyio

from aioreconcile.testing import start_control_plane
from bench.reporting import emit

_TICKS = os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


async def main(runs: int, idle: float) -> None:
    rows = []
    for run in range(1, runs + 1):
        async with start_control_plane() as plane:
            row = {
                "run": run,
                "etcd_ready_s": plane.timings["etcd_ready_s"],
                "apiserver_ready_s": plane.timings["apiserver_ready_s"],
                "control_plane_ready_s": plane.timings["control_plane_ready_s"],
            }
            if run == runs:
                pids = {"etcd": plane.etcd.pid, "kube-apiserver": plane.apiserver.pid}
                before = {n: _cpu_seconds(p) for n, p in pids.items() if p}
                await anyio.sleep(idle)
                for name, pid in pids.items():
                    assert pid is not None
                    row[f"{name}_idle_rss_mib"] = _rss_mib(pid)
                    row[f"{name}_idle_cpu_pct"] = 100 * (_cpu_seconds(pid) - before[name]) / idle
            rows.append(row)
    emit("testenv", rows, extra={"idle_window_s": idle})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args()
    anyio.run(main, args.runs, args.idle)

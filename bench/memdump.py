"""``python -m bench.memdump ARGS``: ``python -m aioreconcile ARGS`` under tracemalloc.

A diagnostic, not a benchmark (tracing every allocation slows the controller and adds its own
memory): on SIGUSR1 it collects garbage and writes where the live Python memory was allocated,
by line and by file, to ``$MEMDUMP_OUT`` (default ``memdump.txt``). ``bench.drift
--tracemalloc PATH`` runs the controller this way and signals it after the idle window.
With ``MEMDUMP_PEAK=1`` a thread also takes a snapshot whenever the traced memory has grown
by a tenth since the last one (each stalls the controller for a second or more) and the dump
adds where the memory was at the largest of them: what the peak is made of.
"""

import gc
import os
import runpy
import signal
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from types import FrameType

_at_peak: list[tuple[int, list[tracemalloc.Statistic]]] = []


def dump(_signal: int = 0, _frame: FrameType | None = None) -> None:
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"traced {current / 2**20:.1f} MiB (peak {peak / 2**20:.1f} MiB)", "--- by line"]
    lines += [
        f"{s.size / 2**20:8.2f} MiB {s.count:9d} {s.traceback}"
        for s in snapshot.statistics("lineno")[:60]
    ]
    lines.append("--- by file")
    lines += [
        f"{s.size / 2**20:8.2f} MiB {s.count:9d} {s.traceback}"
        for s in snapshot.statistics("filename")[:30]
    ]
    for size, statistics in _at_peak[-1:]:
        lines.append(f"--- by line at the largest snapshot ({size / 2**20:.1f} MiB traced)")
        lines += [f"{s.size / 2**20:8.2f} MiB {s.count:9d} {s.traceback}" for s in statistics]
    out = Path(os.environ.get("MEMDUMP_OUT", "memdump.txt"))
    partial = out.with_suffix(".partial")
    partial.write_text("\n".join(lines) + "\n")
    partial.rename(out)  # the reader waits for the whole file


def watch_peak() -> None:
    largest = 0
    while True:
        time.sleep(0.5)
        current, _ = tracemalloc.get_traced_memory()
        if current > largest * 1.1:
            statistics = tracemalloc.take_snapshot().statistics("lineno")[:40]
            largest = current
            _at_peak.append((current, statistics))


if __name__ == "__main__":
    tracemalloc.start()
    if os.environ.get("MEMDUMP_PEAK") == "1":
        threading.Thread(target=watch_peak, daemon=True).start()
    signal.signal(signal.SIGUSR1, dump)
    sys.argv = ["aioreconcile", *sys.argv[1:]]
    runpy.run_module("aioreconcile", run_name="__main__", alter_sys=True)

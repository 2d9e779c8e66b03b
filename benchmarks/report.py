"""What every benchmark script reports the same way: XLA's peak memory, the section's heading, the run's conditions,
the appended section."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import sys
import time


def peak_bytes(compiled) -> int | None:
    """XLA's compiled `memory_analysis()`: temp + arguments + outputs - aliased; None where not implemented."""
    try:
        memory = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 (not every backend implements it)
        return None
    if memory is None:
        return None
    return (memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
            - memory.alias_size_in_bytes)


def heading(title: str, script: str, device: str) -> list[str]:
    """A section's first lines: `## TITLE (date, host, DEVICE)`, then the command that ran it (`python -m SCRIPT`
    with this process's arguments)."""
    command = " ".join([f"python -m {script}", *sys.argv[1:]])
    return [f"## {title} ({datetime.date.today()}, {platform.node()}, {device})", "", f"Command: `{command}`", ""]


def conditions(start: float, load: tuple[float, float, float]) -> str:
    """The load average at the start, the script's wall time since `start` and the process's peak RSS."""
    return (f"Load average at the start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (shared machine: timings are "
            f"noisy). Script wall time {time.perf_counter() - start:.0f} s, process peak RSS "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB.")


def append_section(path: str, text: str) -> None:
    """Prints `text` and appends it to the markdown file `path` (created with a title if missing)."""
    print("\n" + text)
    new = not os.path.exists(path)
    with open(path, "a") as f:
        f.write(("# Benchmarks\n" if new else "") + "\n" + text)

"""A diagnostic for the soak (`scripts/soak.py --memory-probe FILE`): what the server's memory is made of,
every window, as JSON lines.

Python imports `sitecustomize` at start-up from the first directory on its path that has one; the soak puts
this directory on the server's PYTHONPATH. In a `tokenhub serve` process with MEMPROBE_OUT set, a daemon
thread appends a record every MEMPROBE_SECS (60 by default):
- `resident_mib`: the RSS by kind, from /proc/self/smaps: `heap` (glibc's main arena), `pymalloc` (its 1 MiB
  arenas), `anonymous` (other anonymous mappings: glibc's thread arenas, DuckDB's allocator, thread stacks),
  `files` (libraries and other file-backed pages), `other` (the kernel's named mappings: [stack], [vdso] ...);
- `glibc_mib`: `mallinfo2`'s bytes in use and free-but-kept, over every arena, and `arenas`, each arena's
  size and free bytes from `malloc_info` (arena 0 is the main thread's);
- `objects`: what the collector tracks (start-up's objects are frozen out of its sight, pipeline/cli.py), and
  `grown`: the types whose count grew most since the first record.

Reading every object takes the GIL for ~10 ms: not for a benchmark of latency.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import re
import sys
import tempfile
import threading
import time
from typing import Any

_MIB = 2**20
_HEAP = re.compile(r'<heap nr="(\d+)">(.*?)</heap>', re.S)
_ARENA_SIZE = re.compile(r'<system type="current" size="(\d+)"')
_ARENA_FREE = re.compile(r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"')


class MallInfo2(ctypes.Structure):
    _names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    _fields_ = [(name, ctypes.c_size_t) for name in _names]


def mallinfo() -> MallInfo2:
    """glibc's `mallinfo2`, over every arena (`uordblks`: bytes in use; `fordblks`: free but kept)."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2()  # type: ignore[no-any-return]


def resident_by_kind() -> dict[str, float]:
    kinds: collections.Counter[str] = collections.Counter()
    kind = ""
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                low, high = (int(x, 16) for x in fields[0].split("-"))
                name = fields[5] if len(fields) > 5 else ""
                if name == "[heap]":
                    kind = "heap"
                elif name.startswith("["):
                    kind = "other"
                elif name:
                    kind = "files"
                else:
                    kind = "pymalloc" if high - low == _MIB else "anonymous"
            elif fields[0] == "Rss:":
                kinds[kind] += int(fields[1])
    return {name: round(kib / 1024, 2) for name, kib in sorted(kinds.items())}


def glibc() -> dict[str, Any]:
    info = mallinfo()
    libc = ctypes.CDLL(None)
    with tempfile.NamedTemporaryFile("r", suffix=".xml") as out:
        libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        stream = libc.fopen(out.name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        xml = out.read()
    arenas = []
    for match in _HEAP.finditer(xml):
        size = _ARENA_SIZE.search(match.group(2))
        free = sum(int(x) for x in _ARENA_FREE.findall(match.group(2)))
        arenas.append(
            {
                "arena": int(match.group(1)),
                "mib": round(int(size.group(1)) / _MIB, 2) if size else 0.0,
                "free_mib": round(free / _MIB, 2),
            }
        )
    return {"in_use_mib": round(info.uordblks / _MIB, 2), "free_mib": round(info.fordblks / _MIB, 2), "arenas": arenas}


def sample(started: float, first: collections.Counter[str] | None) -> tuple[dict[str, Any], collections.Counter[str]]:
    """One record, and the object counts by type (the first record's are the baseline for `grown`)."""
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    grown = (counts - first).most_common(8) if first is not None else []
    record = {
        "minute": round((time.monotonic() - started) / 60, 3),
        "resident_mib": resident_by_kind(),
        "glibc_mib": glibc(),
        "objects": sum(counts.values()),
        "grown": grown,
        "threads": threading.active_count(),
    }
    return record, first if first is not None else counts


def _run(path: str, every: float) -> None:
    started, first = time.monotonic(), None
    while True:
        time.sleep(every)
        record, first = sample(started, first)
        with open(path, "a") as out:
            out.write(json.dumps(record) + "\n")


if os.environ.get("MEMPROBE_OUT") and "serve" in sys.argv:
    threading.Thread(
        target=_run,
        args=(os.environ["MEMPROBE_OUT"], float(os.environ.get("MEMPROBE_SECS", "60"))),
        daemon=True,
        name="memory-probe",
    ).start()

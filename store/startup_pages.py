"""Give back the pages of the libraries that start-up ran through and requests do not run.

Three compiled libraries run much of their code once, while the server starts, and little or none of it for a
request (measured on the benchmark; MiB resident after start-up, then after 20 s of load with them released):
- DuckDB's module (66 MB): opening a database registers its built-in catalogue (thousands of functions, types
  and settings, with the `icu`, `json` and `parquet` extensions it links in): 35-49 MiB, then ~24 MiB, which
  the request log's writes and queries run;
- cryptography's Rust module, for the vault and the secret box (8 MiB, then 0.7);
- the BLAS and Fortran runtime numpy bundles, which its import initialises and the bandit never calls
  (5 MiB, then 1.5).

Those pages stay mapped, counted in the process's RSS and held in the page cache, for as long as the process
lives. Once `tokenhub serve` has built the app, before its jobs start (and the analytics store each time it opens
its database again, store/analytics.py's REOPEN_ROWS), `release_startup_pages` asks the kernel
to reclaim a library's read-only pages (`madvise(MADV_PAGEOUT)`, Linux 5.4 and later). Nothing else changes: the
mappings stay, and a page that runs again is faulted back in (from the page cache, or from the file if the
kernel dropped it) by the thread that runs it. DuckDB's code runs on the writer's and the readers' threads;
cryptography's on the event loop only when an admin changes the vault or a provider key, a few milliseconds
once. Writable pages (the libraries' data) are the process's own memory and are left alone, and so are pages
another process maps too (the kernel reclaims only pages no one else maps). Where the kernel cannot (another
system, an older kernel, a sandbox refusing the call), nothing is released.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

__all__ = [
    "Released",
    "duckdb_library",
    "release_startup_libraries",
    "release_startup_pages",
    "resident_kib",
    "startup_only_libraries",
    "trim_malloc_heap",
]

log = structlog.get_logger(__name__)

_MADV_PAGEOUT = 21  # <linux/mman.h>, Linux 5.4
_MAPS = Path("/proc/self/maps")
_DUCKDB_MODULES = ("_duckdb", "duckdb.duckdb")  # its module's name by DuckDB release
_MODULES = (*_DUCKDB_MODULES, "cryptography.hazmat.bindings._rust")
_NUMPY_RUNTIMES = ("openblas", "libgfortran", "libquadmath")  # in numpy.libs/, next to a manylinux numpy


@dataclass(frozen=True)
class Released:
    mappings: int  # read-only mappings of the library the kernel was asked to reclaim
    before_kib: int  # the library's resident pages, all its mappings, before and after
    after_kib: int

    @property
    def freed_kib(self) -> int:
        return self.before_kib - self.after_kib


def startup_only_libraries() -> list[str]:
    """The paths of the libraries named in the module's docstring that this installation has."""
    found = [path for name in _MODULES if (path := _module_library(name)) is not None]
    numpy = importlib.util.find_spec("numpy")
    if numpy is not None and numpy.origin:
        bundled = Path(numpy.origin).parent.parent / "numpy.libs"
        if bundled.is_dir():
            runtimes = [p for p in bundled.iterdir() if any(name in p.name for name in _NUMPY_RUNTIMES)]
            found += sorted(str(p.resolve()) for p in runtimes)
    return found


def release_startup_libraries() -> None:
    """`tokenhub serve`, once the app is built and before its components start (their jobs' code is not
    start-up's): release every library `startup_only_libraries` finds, and log how much went."""
    released = [release_startup_pages(path) for path in startup_only_libraries()]
    if any(r.mappings for r in released):
        log.info(
            "startup_pages_released",
            libraries=len(released),
            mib=round(sum(r.freed_kib for r in released) / 1024, 1),
            resident_mib=round(sum(r.after_kib for r in released) / 1024, 1),
        )


@functools.cache
def duckdb_library() -> str | None:
    """DuckDB's compiled module: opening a database (the analytics store's reopen, too) runs its catalogue."""
    return next((path for name in _DUCKDB_MODULES if (path := _module_library(name)) is not None), None)


def _module_library(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except ImportError:  # a parent package that is not installed
        return None
    if spec is not None and spec.origin and spec.origin.endswith(".so"):
        return os.path.realpath(spec.origin)
    return None


def resident_kib(path: str, pid: int | str = "self", kinds: tuple[str, ...] = ("Rss",)) -> int:
    """The resident pages (KiB) of every mapping of `path` in a process (this one by default); 0 where /proc
    is absent. `kinds` are smaps' fields to add up: ``("Private_Clean", "Private_Dirty")`` counts only the
    pages no other process maps, the ones the kernel can reclaim."""
    total, inside = 0, False
    try:
        with Path(f"/proc/{pid}/smaps").open() as smaps:
            for line in smaps:
                if (mapping := _mapping(line)) is not None:
                    inside = mapping[2] == path
                elif inside and line.partition(":")[0] in kinds:
                    total += int(line.split()[1])
    except OSError:
        return 0
    return total


def release_startup_pages(path: str) -> Released:
    """Ask the kernel to reclaim the read-only pages of the library at `path` (see the module's docstring)."""
    before = resident_kib(path)
    madvise = _madvise()
    asked = 0
    for start, end in _read_only_ranges(path):
        if madvise is None or madvise(start, end - start, _MADV_PAGEOUT) != 0:
            code = ctypes.get_errno() if madvise is not None else errno.ENOSYS
            log.debug("startup_pages_kept", library=os.path.basename(path), error=os.strerror(code))
            break
        asked += 1
    return Released(asked, before, resident_kib(path) if asked else before)


def _read_only_ranges(path: str) -> list[tuple[int, int]]:
    ranges = []
    try:
        with _MAPS.open() as maps:
            for line in maps:
                mapping = _mapping(line)
                if mapping is not None and mapping[2] == path and "w" not in mapping[1]:
                    start, end = mapping[0].split("-")
                    ranges.append((int(start, 16), int(end, 16)))
    except OSError:
        return []
    return ranges


def _mapping(line: str) -> tuple[str, str, str] | None:
    """(address range, permissions, path or "") of a mapping's line in /proc/PID/maps or smaps; None for smaps'
    other lines ("Rss:   12 kB")."""
    fields = line.split(maxsplit=5)
    if len(fields) < 5 or "-" not in fields[0]:
        return None
    return fields[0], fields[1], fields[5].rstrip("\n") if len(fields) == 6 else ""


def trim_malloc_heap() -> bool:
    """glibc's `malloc_trim(0)`: give the kernel the free pages of every malloc arena. What one thread frees
    stays resident in that thread's arena, ready for its next allocations; a reopened database's old state
    (freed by the writer thread, its first catalogue by the thread that opened it at start-up) would otherwise
    hold its pages for as long as the process lives. False where there is no glibc."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise  # type: ignore[no-any-return]

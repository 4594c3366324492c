"""Start-up-only library pages given back to the kernel (store/startup_pages.py): in a store, and in the real server."""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

from store.analytics import AnalyticsStore
from store.request_queries import LogFilter, query_logs
from store.startup_pages import release_startup_pages, resident_kib, startup_only_libraries, trim_malloc_heap
from tests.support.pages import private_kib, private_pages_before_release
from tests.support.server import Server, quiet_server_env
from tests.test_record_writer import make_record


def test_a_released_library_keeps_working_and_only_what_runs_again_comes_back(tmp_path: Path) -> None:
    library = next(path for path in startup_only_libraries() if "duckdb" in Path(path).name)
    store = AnalyticsStore(str(tmp_path / "log.duckdb"))
    store.open()  # the catalogue's registration runs through much of the library
    try:
        store.write_requests([make_record(i) for i in range(100)])
        before, own = resident_kib(library), private_pages_before_release(library)

        released = release_startup_pages(library)

        assert released.mappings >= 1 and released.before_kib == before
        assert private_kib(library) < own / 4, released
        # The same connection writes and reads on: the code it runs faults back in.
        store.write_requests([make_record(i) for i in range(100, 200)])
        page = query_logs(store.db, LogFilter(), limit=500, offset=0)
        assert page["total"] == 200
        assert private_kib(library) < own
    finally:
        store.close()


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_trimming_the_heap_gives_back_freed_memory_that_glibc_kept() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    chunks = [libc.malloc(4096) for _ in range(16_384)]  # 64 MiB in the arena (under the mmap threshold)
    for chunk in chunks:
        ctypes.memset(chunk, 1, 4096)
    for chunk in chunks[:-1]:  # the last one stays: the arena's top cannot shrink past it
        libc.free(chunk)
    kept = _rss_mib()
    try:
        assert trim_malloc_heap()
        assert _rss_mib() < kept - 48, "the freed 64 MiB stayed resident"
    finally:
        libc.free(chunks[-1])


def test_a_library_that_is_not_mapped_releases_nothing(tmp_path: Path) -> None:
    released = release_startup_pages(str(tmp_path / "not-a-library.so"))
    assert (released.mappings, released.before_kib, released.after_kib) == (0, 0, 0)


def test_the_libraries_found_are_duckdb_cryptography_and_numpys_runtimes() -> None:
    names = [Path(path).name for path in startup_only_libraries()]
    assert any(name.startswith("_duckdb") for name in names)
    assert "_rust.abi3.so" in names
    assert any("openblas" in name for name in names)  # numpy's manylinux wheel bundles it
    assert all(Path(path).is_file() for path in startup_only_libraries())


async def test_the_server_gives_startup_pages_back_before_it_listens(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", **{**quiet_server_env("t" * 32, tmp_path), "TOKENHUB_LOG_LEVEL": "info"})
    await server.start()
    _, out, err = await server.stop()
    released = [json.loads(line) for line in (out + err).splitlines() if '"startup_pages_released"' in line]
    assert len(released) == 1
    # How much went depends on this test process: the kernel pages out only pages no other process maps, and
    # this one maps the code its own stores ran (the first test measures the effect alone).
    assert released[0]["libraries"] == len(startup_only_libraries()) and released[0]["mib"] > 0, released[0]

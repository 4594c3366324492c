"""Start-up-only library pages given back to the kernel (store/startup_pages.py): in a store, and in the real server."""

from __future__ import annotations

import json
from pathlib import Path

from store.analytics import AnalyticsStore
from store.request_queries import LogFilter, query_logs
from store.startup_pages import release_startup_pages, resident_kib, startup_only_libraries
from tests.support.server import Server, quiet_server_env
from tests.test_record_writer import make_record


def test_a_released_library_keeps_working_and_only_what_runs_again_comes_back(tmp_path: Path) -> None:
    library = next(path for path in startup_only_libraries() if "duckdb" in Path(path).name)
    store = AnalyticsStore(str(tmp_path / "log.duckdb"))
    store.open()  # the catalogue's registration runs through much of the library
    try:
        store.write_requests([make_record(i) for i in range(100)])
        before = resident_kib(library)
        assert before > 8 * 1024

        released = release_startup_pages(library)

        assert released.mappings >= 1 and released.before_kib == before
        assert released.after_kib < before / 4, released
        # The same connection writes and reads on: the code it runs faults back in.
        store.write_requests([make_record(i) for i in range(100, 200)])
        page = query_logs(store.db, LogFilter(), limit=500, offset=0)
        assert page["total"] == 200
        assert resident_kib(library) < before
    finally:
        store.close()


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

"""A library's pages that only this process maps: what `release_startup_pages` can give back."""

from __future__ import annotations

import pytest

from store.startup_pages import resident_kib

PRIVATE = ("Private_Clean", "Private_Dirty")


def private_kib(library: str) -> int:
    return resident_kib(library, kinds=PRIVATE)


def private_pages_before_release(library: str) -> int:
    """This process's own resident pages of `library`, skipping the test when another process maps most of them:
    the kernel does not page out a page another process maps, so a soak or benchmark running from the same
    venv would make a release look like it failed."""
    assert resident_kib(library) > 8 * 1024, f"{library}'s code did not run"
    private = private_kib(library)
    if private < 8 * 1024:
        pytest.skip(f"another process maps {library}'s pages too (only {private} KiB are this process's own)")
    return private

"""The admin UI's front-end libraries are the versions package-lock.json pins, each with its licence, and the
page loads nothing from another origin (so it works offline and under the CSP)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "admin_ui" / "static"


def test_vendored_files_match_the_lock_file() -> None:
    lock = json.loads((ROOT / "package-lock.json").read_text())
    pinned = json.loads((ROOT / "package.json").read_text())["dependencies"]
    vendored = json.loads((STATIC / "vendor" / "versions.json").read_text())
    assert vendored == {name: lock["packages"][f"node_modules/{name}"]["version"] for name in vendored}
    assert set(vendored) == set(pinned), "run `make vendor` after changing package.json"
    for name in vendored:
        assert (STATIC / "vendor" / "licenses" / f"{name}.LICENSE").stat().st_size > 0, name


def test_the_page_loads_only_its_own_files() -> None:
    for path in [STATIC / "index.html", *STATIC.glob("css/**/*.css"), *STATIC.glob("js/**/*.js")]:
        text = path.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path  # no CDN, no other origin
    page = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page)  # no inline script (the CSP forbids it)
    assert "<style" not in page and "style=" not in page  # nor inline style

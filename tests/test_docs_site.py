"""The MkDocs site builds in strict mode, and strict mode catches what it should: a page left out of the nav
(it would silently vanish from the site) and a broken link."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _build(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_site_builds_strict(tmp_path: Path) -> None:
    out = _build(ROOT, tmp_path / "site")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "site" / "deploy" / "production-checklist" / "index.html").is_file()


@pytest.mark.parametrize(
    ("page", "text", "complaint"),
    [
        ("new-page.md", "# A page nobody put in the nav\n", "new-page.md"),
        ("deploy/docker.md", "\nSee [the missing page](missing.md).\n", "missing.md"),
        ("deploy/docker.md", "\nSee [a missing anchor](kubernetes.md#no-such-section).\n", "no-such-section"),
    ],
)
def test_strict_mode_fails_on_an_omitted_page_or_a_broken_link(
    tmp_path: Path, page: str, text: str, complaint: str
) -> None:
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy2(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with (tmp_path / "docs" / page).open("a") as doc:
        doc.write(text)
    out = _build(tmp_path, tmp_path / "site")
    assert out.returncode != 0 and complaint in out.stderr, out.stderr

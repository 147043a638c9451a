"""README.md stays a front door (under 200 lines) and every relative link in it and in docs/*.md points at
a file that exists, and at a heading that exists when the link names one (GitHub's heading anchors)."""
import re
from pathlib import Path
from typing import List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
README_MAX_LINES = 200
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:


def _prose(text: str) -> str:
    """The text without fenced blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def relative_links(text: str) -> List[str]:
    return [t for t in LINK.findall(_prose(text)) if not EXTERNAL.match(t)]


def anchors(text: str) -> Set[str]:
    """GitHub's anchors of the headings: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for title in HEADING.findall(FENCE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def broken_links(page: Path) -> List[Tuple[str, str]]:
    """(link, why) for every relative link of ``page`` that points nowhere."""
    broken = []
    for link in relative_links(page.read_text()):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append((link, f"{target} does not exist"))
        elif anchor and target.suffix == ".md" and anchor not in anchors(target.read_text()):
            broken.append((link, f"{target.name} has no heading #{anchor}"))
    return broken


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; the manual belongs in docs/"


def test_there_are_docs_to_check():
    assert len(PAGES) > 1 and relative_links((REPO / "README.md").read_text())


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_the_docs_table_names_every_docs_page():
    linked = {Path(link.partition("#")[0]).name for link in relative_links((REPO / "README.md").read_text())}
    missing = {p.name for p in PAGES[1:]} - linked
    assert not missing, f"README.md does not link {sorted(missing)}"


def test_the_scan_catches_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## The node's rendered views (Python)\n")
    page = tmp_path / "page.md"
    page.write_text("See [it](other.md#the-nodes-rendered-views-python), [gone](gone.md), "
                    "[bad anchor](other.md#nowhere), [web](https://example.org/x.md), `[code](nope.md)`\n"
                    "```\n[in a block](nope.md)\n```\n")
    assert [link for link, _ in broken_links(page)] == ["gone.md", "other.md#nowhere"]

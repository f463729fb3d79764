"""The README is a front door: short, its two Quickstart commands, no history, and every link into
docs/ (and from there) leading somewhere."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _links(path: Path) -> list[str]:
    return [target for target in re.findall(r"\]\(([^)#\s]+)", path.read_text()) if "://" not in target]


def test_the_readme_is_a_short_front_door_without_history():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 220
    assert not re.search(r"`[0-9a-f]{7,40}`", text), "a commit hash in the README: history goes to docs/"
    quickstart = text[text.index("## Quickstart"):text.index("\n## ", text.index("## Quickstart") + 1)]
    assert re.findall(r"```bash\n(.*?)\n```", quickstart, re.S) == [
        'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && oat demo',
        ". .venv/bin/activate && python -m pytest -q"]


def test_every_link_of_the_readme_and_the_docs_leads_somewhere():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in _links(page):
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}, which is missing"
    linked = {Path(t).name for t in _links(ROOT / "README.md")}
    assert {p.name for p in (ROOT / "docs").glob("*.md")} <= linked, "a docs page the README does not link"

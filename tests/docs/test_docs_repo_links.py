"""docs/_hooks/repo_files.py: links that leave docs/ are published under repo/ and rewritten; others are untouched."""

from __future__ import annotations

import importlib.util
from pathlib import Path

HOOK = Path(__file__).resolve().parents[2] / "docs" / "_hooks" / "repo_files.py"
_spec = importlib.util.spec_from_file_location("repo_files_hook", HOOK)
repo_files = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(repo_files)


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "repo_root"
    (repo / "docs" / "api").mkdir(parents=True)
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "results" / "plot.png").write_bytes(b"png")
    (repo / "docs" / "page.md").write_text("# page")
    return repo / "docs", repo


def test_links_leaving_docs_are_rewritten_relative_to_the_page(tmp_path: Path) -> None:
    docs, repo = _tree(tmp_path)
    markdown = "![plot](../benchmarks/results/plot.png) and [again](../../benchmarks/results/plot.png#top \"t\")"
    assert repo_files.outside_targets(markdown, "index.md", docs, repo) == {"benchmarks/results/plot.png"}
    top = repo_files.rewrite_links("![plot](../benchmarks/results/plot.png)", "index.md", docs, repo)
    assert top == "![plot](repo/benchmarks/results/plot.png)"
    nested = repo_files.rewrite_links('[again](../../benchmarks/results/plot.png#top "t")', "api/x.md", docs, repo)
    assert nested == '[again](../repo/benchmarks/results/plot.png#top "t")'


def test_other_links_are_left_alone(tmp_path: Path) -> None:
    docs, repo = _tree(tmp_path)
    markdown = ("[inside](page.md) [missing](../benchmarks/results/none.png) [web](https://example.org/a) "
                "[escape](../../../etc/passwd) [anchor](#section)")
    assert repo_files.outside_targets(markdown, "index.md", docs, repo) == set()
    assert repo_files.rewrite_links(markdown, "index.md", docs, repo) == markdown

"""MkDocs hook: serve the repository files that documentation pages link to outside ``docs/``.

Pages link to benchmark scripts, results and plots with relative paths such as
``../benchmarks/results/hooks_cpu.png``, which also work when the Markdown is read on a code
host. MkDocs only publishes files under ``docs_dir``, so ``--strict`` would reject those links.
Steps:

1. ``on_files``: scan every page for relative link targets that leave ``docs_dir``; each one
   that names an existing file inside the repository is added to the site under ``repo/``
   (e.g. ``repo/benchmarks/results/hooks_cpu.png``);
2. ``on_page_markdown``: rewrite those targets to the published copy, relative to the page.

Targets that do not exist are left alone, so MkDocs still reports them as broken links. The link
logic is in plain functions (:func:`outside_targets`, :func:`rewrite_links`) that need no MkDocs.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files
    from mkdocs.structure.pages import Page

PUBLISHED_PREFIX = "repo"
# Inline Markdown links and images: ](target), ](target#anchor) or ](target "title"); the target has no spaces.
LINK_TARGET = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?((?:\s+\"[^\"]*\")?\))")


def outside_target(page_src_uri: str, target: str, docs_dir: Path, repo_root: Path) -> str | None:
    """The repository-relative path of ``target`` if it leaves ``docs_dir`` and names a repository file, else None."""
    if "://" in target or target.startswith(("/", "mailto:")):
        return None
    resolved = (docs_dir / posixpath.dirname(page_src_uri) / target).resolve()
    if resolved.is_relative_to(docs_dir) or not resolved.is_relative_to(repo_root) or not resolved.is_file():
        return None
    return resolved.relative_to(repo_root).as_posix()


def outside_targets(markdown: str, page_src_uri: str, docs_dir: Path, repo_root: Path) -> set[str]:
    """Repository-relative paths of every link target in ``markdown`` that leaves ``docs_dir`` and exists."""
    found = (outside_target(page_src_uri, m.group(2), docs_dir, repo_root) for m in LINK_TARGET.finditer(markdown))
    return {path for path in found if path is not None}


def rewrite_links(markdown: str, page_src_uri: str, docs_dir: Path, repo_root: Path) -> str:
    """``markdown`` with each such target pointing at its copy under ``PUBLISHED_PREFIX/``, relative to the page."""
    page_dir = posixpath.dirname(page_src_uri) or "."

    def rewrite(match: re.Match[str]) -> str:
        outside = outside_target(page_src_uri, match.group(2), docs_dir, repo_root)
        if outside is None:
            return match.group(0)
        published = posixpath.relpath(f"{PUBLISHED_PREFIX}/{outside}", page_dir)
        return f"{match.group(1)}{published}{match.group(3) or ''}{match.group(4)}"

    return LINK_TARGET.sub(rewrite, markdown)


def _roots(config: MkDocsConfig) -> tuple[Path, Path]:
    docs_dir = Path(config["docs_dir"]).resolve()
    return docs_dir, docs_dir.parent


def on_files(files: Files, config: MkDocsConfig) -> Files:
    from mkdocs.structure.files import File

    docs_dir, repo_root = _roots(config)
    wanted: set[str] = set()
    for page_file in files.documentation_pages():
        text = Path(page_file.abs_src_path).read_text(encoding="utf-8")
        wanted |= outside_targets(text, page_file.src_uri, docs_dir, repo_root)
    for rel in sorted(wanted):
        files.append(File.generated(config, f"{PUBLISHED_PREFIX}/{rel}", abs_src_path=str(repo_root / rel)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    docs_dir, repo_root = _roots(config)
    return rewrite_links(markdown, page.file.src_uri, docs_dir, repo_root)

"""Docs that cannot drift: every plugin folder is named in both READMEs, and every relative
link in the Markdown docs points at a file that exists (and a heading that exists)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    ROOT / "CONTRIBUTING.md",
    ROOT / "plugins" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "plugins").glob("*/README.md")),
]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_every_plugin_is_named_in_both_readmes():
    plugins = sorted(p.parent.name for p in (ROOT / "plugins").glob("*/pyproject.toml"))
    assert plugins
    for readme in (ROOT / "README.md", ROOT / "plugins" / "README.md"):
        text = readme.read_text(encoding="utf-8")
        missing = [p for p in plugins if f"`{p}`" not in text]
        assert missing == [], f"{readme.relative_to(ROOT)} does not name {missing}"


def test_every_relative_link_resolves():
    bad = []
    checked = 0
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            checked += 1
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                bad.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
                continue
            if anchor and dest.suffix == ".md":
                anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(encoding="utf-8"), flags=re.M)}
                if anchor not in anchors:
                    bad.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert checked > 20  # the pattern finds the docs' links
    assert bad == [], "\n".join(bad)


def test_every_method_documents_its_lifecycle_and_sample_configs_that_build():
    """Each method's class docstring says its lifecycle and shows sample configs; every sample
    written as a step (``name:field=value,...``) builds."""
    from lmcompose.plugins import get_interventions
    from lmcompose.steps import build_intervention, parse_step

    registry = get_interventions()
    for name in registry.names():
        cls = registry.get(name)
        doc = cls.__doc__ or ""
        assert "Lifecycle:" in doc and "Sample config::" in doc, (
            f"{name}: docstring lacks its lifecycle or sample config"
        )
        samples = [line.split("#")[0].strip() for line in doc.split("Sample config::", 1)[1].splitlines()]
        steps = [s for s in samples if s and not s.startswith("{")]
        assert steps, name
        for step in steps:
            assert build_intervention(parse_step(step)).name == name, step

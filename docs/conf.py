"""Sphinx configuration of the sb3_parallel_dqn documentation (built by ``tests/test_docs.py`` with warnings as errors)."""

import sys
from pathlib import Path

# The docs describe this checkout's package, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

project = "sb3_parallel_dqn"
author = "sb3_parallel_dqn contributors"
copyright = "sb3_parallel_dqn contributors"
release = (Path(__file__).resolve().parent.parent / "sb3_parallel_dqn" / "version.txt").read_text().strip()
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# The result folders under benchmarks/ hold Markdown reports that are data, not pages; _generated/ is included by
# the benchmark pages, not built on its own.
exclude_patterns = ["_build", "benchmarks/_generated", "benchmarks/*/**"]
source_suffix = {".rst": "restructuredtext"}

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# SB3 and torch are documented on their own sites; without intersphinx (no fetch at build time) their names in
# signatures stay plain text instead of broken links.
nitpicky = False

html_theme = "sphinx_rtd_theme"
html_title = f"sb3_parallel_dqn {release}"
html_show_sourcelink = False


def _blank_line_after_fields(app, what, name, obj, options, lines):
    """A docstring line right after a field list (``The other parameters are ...`` after the last ``:param:``) is
    read by docutils as an unterminated field list; a blank line in front of it makes it the paragraph it is."""
    in_fields = False
    fixed: list[str] = []
    for line in lines:
        starts_field = line.startswith(":")
        if in_fields and line and not line[0].isspace() and not starts_field:
            fixed.append("")
            in_fields = False
        if starts_field:
            in_fields = True
        elif not line:
            in_fields = False
        fixed.append(line)
    lines[:] = fixed


def setup(app):
    app.connect("autodoc-process-docstring", _blank_line_after_fields)

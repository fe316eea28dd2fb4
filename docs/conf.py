"""Sphinx configuration: MyST Markdown pages, autodoc for the API page, alabaster."""

from __future__ import annotations

import flask_unified_session

project = "flask-unified-session"
author = "flask-unified-session contributors"
copyright = "flask-unified-session contributors"
release = flask_unified_session.__version__
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_heading_anchors = 3
myst_enable_extensions = ["deflist"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

html_theme = "alabaster"
html_title = "flask-unified-session"
html_theme_options = {
    "description": "One engine per database, one way to get a session.",
    "fixed_sidebar": True,
}

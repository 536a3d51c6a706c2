"""Sphinx configuration of the book's site (``python -m softq.book.site`` passes this folder as ``-c``)."""

project = "softq"
author = "the softq authors"
copyright = "2026, the softq authors"
html_title = "softq: policy gradients and soft Q-learning, executed"

extensions = [
    "myst_nb",  # reads the executed .ipynb chapters (and the MyST Markdown index)
    "sphinx_togglebutton",  # folded solutions
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static/: equations render without a network
]
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
nb_execution_mode = "off"  # the site shows the outputs of `make book`'s run; nothing executes again
nb_output_stderr = "remove"  # warnings and progress bars of the run are not part of the text
nb_render_markdown_format = "myst"  # Markdown outputs (the appendix's tables) parsed as MyST: tables, {ref} links
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_dmath_double_inline = True
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header", "misc.highlighting_failure"]

html_theme = "sphinx_book_theme"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "home_page_in_toc": True,
}
html_static_path = ["static"]
html_css_files = ["softq.css"]
html_last_updated_fmt = None
html_show_sourcelink = False

"""A minimal chapter file for tests that build and run throwaway chapters (softq.book, softq.book.equation_index)."""

import textwrap

HEADER = textwrap.dedent("""\
    ---
    jupytext:
      text_representation:
        extension: .md
        format_name: myst
        format_version: 0.13
    kernelspec:
      display_name: Python 3 (softq)
      language: python
      name: python3
    ---
    """)

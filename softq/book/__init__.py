"""The book's machinery, apart from the paper's objects (``softq.*``) and the training engine (``softq.rl``).

- :mod:`softq.book.check`: ``check(...)``, the executed claim that raises when false, and its records;
- :mod:`softq.book.build`: the chapter runner (``python -m softq.book``: every chapter in a fresh kernel, its
  notebook, HTML, check records and figures);
- :mod:`softq.book.equation_index`: the paper's 90 equations, where each is checked and what its errata are;
- :mod:`softq.book.nbval_records`: the pytest plugin that records the checks of the nbval run;
- :mod:`softq.book.site`: the book's site (``python -m softq.book.site``);
- :mod:`softq.book.plots`: the book's figures (reading a run folder is :mod:`softq.rl.experiments.folder`'s).

Importing this package imports none of them, so that a chapter's ``from softq.book.check import check`` stays light.
"""

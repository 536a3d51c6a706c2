"""Diagnostics: throughput (:mod:`.bench`, ``make bench``), the check that CUDA-graph and compiled updates compute
what the eager one does (:mod:`.graph_check`), and what a checkpoint's optimizer state says (:mod:`.inspect`)."""

"""The agents: what learns. :mod:`~softq.rl.agents.base` holds what both share (the :class:`Agent` interface the
training loop drives, the :class:`RunConfig` base of their configs, the registry of algorithms); :mod:`.a2c` and
:mod:`.dqn` are the paper's two algorithms, and :mod:`.compare` measures A2C's update rules transition by transition
(the chapters' gradient comparisons and A2C's ``agreement.csv`` hook). They import :mod:`softq.rl.parts` and the
paper's objects, nothing above.
"""

"""softq.rl: deep RL for the paper's experiments (Section 6), trained with softq's own losses and targets.

- :mod:`softq.rl.envs`: Atari (ale-py's vector env, the paper's protocol) and classic control behind one interface.
- :mod:`softq.rl.nets`: the shared-trunk actor-critic (Nature CNN / MLP).
- :mod:`softq.rl.a2c`: A2C with the paper's three update rules, ``naive`` (eq 79), ``proper`` (eq 80), ``soft_q``
  (Section 6.3), every hyperparameter in :class:`softq.rl.a2c.Config`.
- :mod:`softq.rl.dqn`: DQN with the backups of Section 6.2, ``hard`` (eq 81), ``soft_kl`` and ``soft_ent`` (eqs 82,
  83, corrected), 1- or n-step, every hyperparameter in :class:`softq.rl.dqn.Config` (CleanRL's dqn_atari defaults).
- :mod:`softq.rl.replay`: the frame replay (each frame once, on the training device, sampled by index arithmetic).
- :mod:`softq.rl.runs`: logs, atomic checkpoints, resume, the ``results/<experiment>/<rule>/seed<k>/`` layout.
- :mod:`softq.rl.bench`: ``make bench``. Command line: ``python -m softq.rl train|bench``.
"""

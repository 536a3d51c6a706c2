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

import os as _os
import sys as _sys

#: Whether torch's OpenMP threads stop spinning soon after an op (True when this package was imported before torch,
#: or the user set the policy). torch's libgomp lets a thread that finished its share of an op spin for about
#: 300,000 iterations before it sleeps; beside the emulators' threads or another job that spinning thread holds a
#: core, and an op's next barrier waits for a descheduled thread. Measured 2026-12-03 (2-core Intel Xeon, Pong A2C,
#: 16 envs, 2 ALE threads, 2 torch threads, one busy process beside): 190-206 agent steps/s with libgomp's default,
#: 572-627 with GOMP_SPINCOUNT=0 or 3000 (1 torch thread: 694-707), while idle 3000 is as fast as the default.
#: libgomp reads the variable once, when torch loads it, so it is set here, before :mod:`softq.rl` imports torch.
OPENMP_SPIN_BOUNDED = "torch" not in _sys.modules or any(
    k in _os.environ for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"))
_os.environ.setdefault("GOMP_SPINCOUNT", "3000")

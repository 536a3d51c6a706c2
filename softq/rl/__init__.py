"""softq.rl: deep RL for the paper's experiments (Section 6), trained with softq's own losses and targets.

Four layers, each importing only the paper's objects, its own layer and those above it in this list
(``tests/test_layout.py`` checks it):

- :mod:`softq.rl.parts`: environments (Atari through ale-py's vector env with the paper's protocol, and classic
  control, behind one interface), networks, optimizers (TensorFlow's RMSProp among them), the frame replay.
- :mod:`softq.rl.agents`: A2C with the paper's three update rules, ``naive`` (eq 79), ``proper`` (eq 80), ``soft_q``
  (Section 6.3), and DQN with the backups of Section 6.2, ``hard`` (eq 81), ``soft_kl`` and ``soft_ent`` (eqs 82, 83,
  corrected); every hyperparameter in their ``Config``; one :class:`~softq.rl.agents.base.Agent` interface.
- :mod:`softq.rl.experiments`: the run folder ``results/<experiment>/<rule>/seed<k>/``, the training loop with
  atomic checkpoints and resume, several runs at once, grids (locally or on Ray), provenance, statistics over seeds.
- :mod:`softq.rl.diagnostics`: ``make bench``, the graph check, per-transition gradients, checkpoint inspection.

Command line: ``python -m softq.rl train|bench|inspect`` (:mod:`softq.rl.__main__`).
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

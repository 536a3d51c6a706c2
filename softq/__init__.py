"""softq: the helper package of the executable textbook of Schulman, Chen & Abbeel (2017),
"Equivalence Between Policy Gradients and Soft Q-Learning".

Modules are named after the paper's objects (DESIGN.md): ``regularized`` (Boltzmann policy, soft value, KL, soft
backups), ``check`` (the book's verifications), ``config`` (smoke mode, dtype, device).
"""

__version__ = "0.1.0"

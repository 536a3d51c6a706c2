"""Running experiments: one run's folder (:mod:`.folder`), the training loop with checkpoints and resume
(:mod:`.loop`), several runs at once (:mod:`.launch`), a grid of runs filled and resumed (:mod:`.grid`, on a Ray
cluster :mod:`.cluster`), what produced a result (:mod:`.provenance`), and statistics over seeds (:mod:`.stats`)."""

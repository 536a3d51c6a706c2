"""The parts agents are built from: environments (:mod:`.envs`), networks (:mod:`.nets`), optimizers (:mod:`.optim`)
and the frame replay (:mod:`.replay`). They import only the paper's objects and one another."""

# softq: the executable textbook of Schulman, Chen & Abbeel (2017).
#   make book   execute every chapter (full mode): build/notebooks, build/html, build/checks.json, build/figures,
#               then the book's site from that run: build/site/index.html (softq.book.site; offline)
#   make test   ruff + unit tests + every chapter through nbval in smoke mode (what CI runs)
#   make lab    JupyterLab with the .md chapters opening as notebooks
#   make figures  execute every chapter and write their figures into the committed figures/
#   make sweep  chapters 1-5 and 9 on 200 random instances each of a reader's parameters -> results/sweep/last.json
#   make bench / make train ARGS="..."   softq.rl throughput on this machine; training runs (see the end)
# Each target creates .venv on first use and reuses it afterwards (delete .venv to start over).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.softq-installed
# Chapters run in the kernel of this .venv, whatever other kernels the machine has.
export JUPYTER_PATH := $(CURDIR)/$(VENV)/share/jupyter
export PYTHONHASHSEED := 0

.PHONY: all book site test lint unit nbval lab figures clean venv browser

all: test

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (softq)" > /dev/null
	@mkdir -p $(VENV)/share/jupyter/lab/settings
	@cp tools/lab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	@touch $@

book: $(STAMP)
	$(PY) -m softq.book
	$(PY) -m softq.book.site

# The site alone, from the last `make book` run (ARGS="--sources": from the chapters, without outputs).
site: $(STAMP)
	$(PY) -m softq.book.site $(ARGS)

# The committed figures/ (make book writes its figures to build/figures/, so that a build leaves the tree clean).
figures: $(STAMP)
	$(PY) -m softq.book --figures figures

lint: $(STAMP)
	$(PY) -m ruff check softq tests

# The sweep (tests/test_sweep.py) runs in a pytest process of its own, so that its draws and its time show apart from
# the unit tests'.
unit: $(STAMP) browser
	$(PY) -m pytest tests -q --ignore=tests/test_sweep.py
	$(PY) -m pytest tests/test_sweep.py -q -p no:cacheprovider

# tests/test_site.py opens the site in headless Chromium (Debian's package): installed here if it is missing and
# apt-get can (root); otherwise that one test is skipped, and says so.
browser:
	@command -v chromium > /dev/null 2>&1 || command -v chromium-browser > /dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null 2>&1; then \
	      echo "installing Chromium (Debian's package) for the site's browser test"; \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium > /dev/null 2>&1 || \
	        { apt-get update -q > /dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium > /dev/null 2>&1; } || \
	        echo "could not install Chromium: the site's browser test will be skipped"; \
	    else echo "no Chromium (apt install chromium): the site's browser test will be skipped"; fi; }

# nbval reads .ipynb: convert each MyST chapter to a throwaway notebook under build/, then run it in smoke mode.
# softq.book.nbval_records makes each chapter write its checks to build/nbval/checks/ (the appendix reads them).
nbval: $(STAMP)
	@rm -rf build/nbval && mkdir -p build/nbval
	@for f in notebooks/[0-9][0-9]_*.md; do \
	  $(PY) -m jupytext --quiet --to ipynb -o build/nbval/$$(basename $${f%.md}).ipynb $$f || exit 1; done
	SOFTQ_SMOKE=1 $(PY) -m pytest -q -p no:cacheprovider -p softq.book.nbval_records --nbval-lax --nbval-current-env \
	  --nbval-cell-timeout=600 build/nbval

test: lint unit nbval

# Every chapter's checks hold for a reader's parameters: tests/test_sweep.py runs the key computations and checks of
# chapters 1-5 and 9 on SWEEP_DRAWS random instances each (S 2-20, A 2-6, gamma 0.5-0.97, tau 0.05-2, n 1-5, network
# sizes, seeds, Monte Carlo sizes). `make test` runs 5 derandomized draws each; `make sweep` random ones, prints each
# failure with its instance and writes each chapter's draws, failures and time, with its run's commit, machine and
# date, to SWEEP_OUT; CHAPTERS="03 05" runs those chapters and replaces only their records there.
empty :=
space := $(empty) $(empty)
SWEEP_DRAWS ?= 200
SWEEP_OUT ?= results/sweep/last.json
CHAPTERS ?= 01 02 03 04 05 09
.PHONY: sweep
sweep: $(STAMP)
	@SOFTQ_SWEEP_DRAWS=$(SWEEP_DRAWS) SOFTQ_SWEEP_OUT=$(SWEEP_OUT) $(PY) -m pytest tests/test_sweep.py -q \
	  -p no:cacheprovider -k "$(subst $(space), or ,$(foreach c,$(CHAPTERS),chapter_$(c)))"

# Lab runs from the project's root, so that jupytext finds jupytext.toml and pairs each chapter with its .ipynb
# (outputs survive reopening); it opens on notebooks/. As root (containers) Lab needs --allow-root.
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=. --ServerApp.default_url=/lab/tree/notebooks \
	  $(if $(filter 0,$(shell id -u)),--allow-root) $(ARGS)

clean:
	rm -rf build

# Deep RL (softq.rl). `make bench`: env, A2C and DQN throughput on this machine -> results/bench/<machine kind>.json
#   (`make bench ARGS="--what dqn --dqn-num-envs 8,16"`: the DQN figures only).
# `make train ARGS="--env CartPole-v1 --rule proper --frames 100000 --lr 2e-3 --num-envs 8"`: one or more A2C runs;
# `make train ARGS="--algo dqn --backup soft_ent --tau 0.1 --n-step 5"`: DQN (Section 6.2) on Pong, 10M frames.
.PHONY: bench train
bench: $(STAMP)
	$(PY) -m softq.rl bench $(ARGS)

train: $(STAMP)
	$(PY) -m softq.rl train $(ARGS)

# The A2C grid of Figures 1 and 3 (chapters 6 and 8): rules naive, proper, soft_q x seeds 0, 1, 2 with the paper's
#   protocol (softq.rl.agents.a2c.Config's defaults: TensorFlow's RMSProp, float32, policy-head gain 1.0, the
#   learning rate decaying to 0 at the paper's 320M frames), proper vs soft_q measured every 200 updates
#   (agreement.csv). --fill skips finished runs, resumes paused ones and restarts partial ones (softq.rl.experiments.grid);
#   ARGS="--dry-run" prints the plan and how it departs from the paper's protocol; ARGS="--time-limit-minutes 150"
#   stops cleanly in time.
# `make grid-pong`: the Pong panel on a 2-core CPU, two runs side by side, one core each: 20M frames a run, where
#   OpenAI baselines' A2C is well into learning Pong (its Atari-10M benchmark: about -19 at 6M frames, +10 at 16M).
# `make grid-atari`: the paper's six games, for a GPU machine (ARGS="--parallel 3"): ATARI_FRAMES frames a run, by
#   default 40M, the budget at which baselines' Atari benchmark and the Stable-Baselines3 zoo report A2C (Pong: +18.5
#   and 17.3 +- 3.2); ATARI_FRAMES=320000000 is the paper's own.
# `make grid-pong-rmsprop-torch`: the optimizer study of the appendix (torch's RMSprop, 10M frames a run).
A2C_PAPER := --rules naive,proper,soft_q --seeds 0,1,2 --agreement-every 200 --fill --no-progress
ATARI_FRAMES ?= 40000000
ATARI6 := BeamRiderNoFrameskip-v4,BreakoutNoFrameskip-v4,EnduroNoFrameskip-v4,PongNoFrameskip-v4,QbertNoFrameskip-v4,SeaquestNoFrameskip-v4
.PHONY: grid-pong grid-atari grid-pong-rmsprop-torch
grid-pong: $(STAMP)
	$(PY) -m softq.rl train --env PongNoFrameskip-v4 --experiment 'a2c-paper-{env}' $(A2C_PAPER) --frames 20000000 \
	  --parallel 2 $(ARGS)

grid-atari: $(STAMP)
	$(PY) -m softq.rl train --envs $(ATARI6) --experiment 'a2c-atari-{env}' $(A2C_PAPER) --frames $(ATARI_FRAMES) $(ARGS)

grid-pong-rmsprop-torch: $(STAMP)
	$(PY) -m softq.rl train --env PongNoFrameskip-v4 $(A2C_PAPER) --frames 10000000 --optimizer rmsprop_torch \
	  --parallel 2 $(ARGS)

# Figure 2's Pong panel on a 2-core CPU (chapter 7): DQN with softq.rl.agents.dqn.PONG_CPU's settings (Tianshou's
#   Atari DQN, 4M frames a run), seeds 0 and 1 of the standard, entropy-bonus and KL-penalty targets (tau 0.1), then of the
#   5-step standard target (Figure 2's "standard, n=5") and the 5-step entropy target, two runs side by side. --fill
#   as above: ARGS="--dry-run", ARGS="--time-limit-minutes 130", ARGS="--taus 0.01" (the paper's other temperature:
#   the later --taus wins).
DQN_PONG := --algo dqn --env PongNoFrameskip-v4 --preset pong-cpu --taus 0.1 --seeds 0,1 --fill --parallel 2 --no-progress
.PHONY: grid-pong-dqn
grid-pong-dqn: $(STAMP)
	$(PY) -m softq.rl train $(DQN_PONG) --backups hard,soft_ent,soft_kl --n-steps 1 $(ARGS)
	$(PY) -m softq.rl train $(DQN_PONG) --backups hard,soft_ent --n-steps 5 $(ARGS)

# Why the entropy-bonus target trails on Pong (chapter 7): seed 0, 4M frames, PONG_CPU, two runs side by side.
#   The loss study: hard, soft_ent and soft_kl (tau 0.1) with the 2017 DQN's loss (Huber, gradient norm clipped at
#   10, Adam eps 1e-4; results/dqn-loss2017-PongNoFrameskip-v4). The temperature study: soft_ent and soft_kl at
#   tau 0.01 with the panel's loss (results/dqn-tau0.01-PongNoFrameskip-v4).
DQN_STUDY := --algo dqn --env PongNoFrameskip-v4 --preset pong-cpu --seeds 0 --n-steps 1 --fill --parallel 2 --no-progress
.PHONY: pong-dqn-studies
pong-dqn-studies: $(STAMP)
	$(PY) -m softq.rl train $(DQN_STUDY) --backups hard,soft_ent,soft_kl --tau 0.1 --loss huber --max-grad-norm 10 \
	  --adam-eps 1e-4 --experiment 'dqn-loss2017-{env}' $(ARGS)
	$(PY) -m softq.rl train $(DQN_STUDY) --backups soft_ent,soft_kl --taus 0.01 --experiment 'dqn-tau0.01-{env}' $(ARGS)

# Figure 2's Pong panel at the 2017 DQN's loss (chapter 7: the loss study narrowed the gap by more than the seeds'
#   spread, so the panel is re-run with it): the standard, entropy-bonus and KL-penalty targets (tau 0.1) and the
#   5-step standard target, seeds 0 and 1, in the loss study's folder (its seed-0 runs are three of the eight).
DQN_PONG_2017 := --algo dqn --env PongNoFrameskip-v4 --preset pong-cpu --seeds 0,1 --loss huber --max-grad-norm 10 \
  --adam-eps 1e-4 --experiment 'dqn-loss2017-{env}' --fill --parallel 2 --no-progress
.PHONY: grid-pong-dqn-2017
grid-pong-dqn-2017: $(STAMP)
	$(PY) -m softq.rl train $(DQN_PONG_2017) --backups hard,soft_ent,soft_kl --tau 0.1 --n-steps 1 $(ARGS)
	$(PY) -m softq.rl train $(DQN_PONG_2017) --backups hard --n-steps 5 $(ARGS)

# `make lease`: the one prepared command for a lent GPU machine (tools/lease.sh; its header says how to call it with
#   the device tool): install the carried wheels if needed, bench (<= 90 s), then A2C naive/proper/soft_q on Pong side
#   by side for the rest of LEASE_SECONDS (default 540), packed into $OUT (default lease-out/) as <= 8 files < 16 MiB.
#   No .venv prerequisite: the device machine is offline and uses its own python3.
.PHONY: lease
lease:
	bash tools/lease.sh

#!/usr/bin/env bash
# tools/lease.sh (`make lease`): spend one lent GPU machine (one H100/H200, 16 cores, offline) in ONE command:
#   1. setup   install gymnasium + ale-py from the carried wheels if `import ale_py, gymnasium` fails (pip from the
#              wheel folder; else pip --target, as device-wheels.sh prints; else unzip them), softq itself through
#              PYTHONPATH (no pip -e: nothing to build offline); record the versions, the machine and CUDA
#   2. bench   `python -m softq.rl bench --seconds S ...` in three calls sharing one bound (LEASE_BENCH_BUDGET, 90 s):
#              A2C env/training throughput + the CUDA-graph check, then DQN with 8 envs, then DQN with 16 envs.
#              Every call merges its figures into the same results/bench/<machine>.json, so a call cut by its
#              timeout loses only its own figures. A failed bench is recorded and training still runs.
#   3. train   the three A2C rules side by side on Pong, one seed, `--parallel 3`, for the rest of the budget:
#              --time-limit-minutes M with M computed so that the runs pause (after a checkpoint) and the whole
#              command ends within LEASE_SECONDS; a hard `timeout` backs it up (SIGTERM = pause, then SIGKILL).
#   4. pack    into $OUT, at most 8 files of < 16 MiB each (checked):
#                lease-results.tar.gz   results/a2c-<env>/<rule>/seed<k>/{config.json,progress.csv,status.json}
#                                       and results/bench/<machine>.json (no checkpoint.pt)
#                bench-<machine>.json   the bench record (also inside the tar)
#                lease-summary.json     budget, versions, each phase's command, exit code and seconds
#                lease.log              this command's whole stdout + stderr
#
# How the lead uses it with the device tool (one `run` call of <= 10 min; budget 15 device-minutes in all, machine
# start included, so there is no second try: first run the CPU test, tests/test_lease.py):
#   here, once:   bash ../shared/tools/device-wheels.sh      # Python 3.12 wheels of gymnasium/ale-py -> .whl/
#   the call:     run(command="bash tools/lease.sh", carry=[".whl"], timeout_s=600)
#                 (the tool sets $OUT; LEASE_SECONDS=540 by default leaves ~60 s to the tool's 600 s limit; to
#                 change it: command="LEASE_SECONDS=480 bash tools/lease.sh")
#   afterwards:   the reply lists the files under files_at (copied back already); from the project's root:
#                 tar xzf <files_at>/lease-results.tar.gz      # -> results/a2c-PongNoFrameskip-v4/..., results/bench/
#                 and read <files_at>/lease-summary.json and lease.log (the reply's output_tail is the log's end).
# The device machine's Python is probably 3.12 (the wheels are cp312; this CPU machine runs 3.11): the script
# prints the version and warns when the carried ale-py wheel does not match it.
#
# Settings (environment variables; defaults in brackets):
#   LEASE_SECONDS [540]        total wall-clock budget of the command, in seconds
#   OUT [./lease-out]          where the result files go (the device tool sets it)
#   LEASE_PYTHON [.venv/bin/python if present, else python3]
#   LEASE_WHEELS [.whl]        the wheel folder of device-wheels.sh
#   LEASE_WORK [a new /tmp/softq-lease.XXXXXX]   scratch folder holding results/
#   LEASE_BENCH_SECONDS_EACH [2]   bench --seconds (each measurement)
#   LEASE_BENCH_BUDGET [90]    seconds for all bench calls together
#   LEASE_BENCH ["--what a2c,graph;--what dqn --dqn-num-envs 8;--what dqn --dqn-num-envs 16"]   bench calls, ';'
#                              between calls ("" skips the bench)
#   LEASE_ENV [PongNoFrameskip-v4]  LEASE_RULES [naive,proper,soft_q]  LEASE_SEEDS [0]  LEASE_PARALLEL [3]
#   LEASE_FRAMES [10000000]    --frames of the runs: where each stops (the time limit comes first on one lease)
#   LEASE_TRAIN_ARGS [""]      more `train` options, e.g. "--num-envs 2" (word-split)
#   LEASE_STARTUP_SECONDS [35] the part of the training phase not spent training: the runs' start (imports, CUDA,
#                              envs) and their stop; includes the last 10 s, between the hard timeout's SIGTERM (the
#                              runs pause: checkpoint, status "paused") and its SIGKILL
#   LEASE_PACK_SECONDS [15]    kept for packing at the end
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUDGET=${LEASE_SECONDS:-540}
OUT=${OUT:-$ROOT/lease-out}
if [[ -n ${LEASE_PYTHON:-} ]]; then PY=$LEASE_PYTHON
elif [[ -x $ROOT/.venv/bin/python ]]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi
WHEELS=${LEASE_WHEELS:-$ROOT/.whl}
WORK=${LEASE_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/softq-lease.XXXXXX")}
BENCH_S=${LEASE_BENCH_SECONDS_EACH:-2}
BENCH_BUDGET=${LEASE_BENCH_BUDGET:-90}
BENCH=${LEASE_BENCH-"--what a2c,graph;--what dqn --dqn-num-envs 8;--what dqn --dqn-num-envs 16"}
ENV_ID=${LEASE_ENV:-PongNoFrameskip-v4}
RULES=${LEASE_RULES:-naive,proper,soft_q}
SEEDS=${LEASE_SEEDS:-0}
PARALLEL=${LEASE_PARALLEL:-3}
FRAMES=${LEASE_FRAMES:-10000000}
TRAIN_ARGS=${LEASE_TRAIN_ARGS:-}
STARTUP_S=${LEASE_STARTUP_SECONDS:-35}
PACK_S=${LEASE_PACK_SECONDS:-15}
EXPERIMENT=a2c-$ENV_ID
MAX_FILES=8
MAX_BYTES=$((16 * 1024 * 1024 - 4096))  # under 16 MiB, with a margin

mkdir -p "$OUT" "$WORK/results/bench"
rm -f "$OUT"/lease.log "$OUT"/lease-results.tar.gz "$OUT"/lease-summary.json "$OUT"/bench-*.json
PHASES=$WORK/phases.tsv
: > "$PHASES"
exec 3>&1 4>&2  # the command's own stdout/stderr, for after the log closes
exec > >(tee "$OUT/lease.log") 2>&1
TEE_PID=$!

stamp() { echo "t+${SECONDS}s/${BUDGET}s"; }
say() { echo "=== [$(stamp)] $*"; }
LAST_RC=0
# phase NAME LIMIT_S CMD...: run CMD under `timeout` (SIGTERM at LIMIT_S, SIGKILL 10 s later); record; never fail
phase() {
  local name=$1 limit=$2 t0=$SECONDS cmd
  shift 2
  cmd="$*"
  cmd=${cmd//$'\n'/ }
  cmd=${cmd//$'\t'/ }
  say "phase $name: start (limit ${limit}s): $cmd"
  LAST_RC=0
  timeout -k 10 "$limit" "$@" || LAST_RC=$?
  local verdict=ok
  if ((LAST_RC == 124 || LAST_RC == 137)); then verdict="TIMED OUT"; elif ((LAST_RC != 0)); then verdict=FAILED; fi
  say "phase $name: $verdict (exit $LAST_RC) after $((SECONDS - t0))s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$LAST_RC" "$((SECONDS - t0))" "$cmd" >> "$PHASES"
}
skip() {  # skip NAME WHY [VERDICT]: VERDICT "skipped" (default: follows a failure already recorded) or "no-time"
  say "phase $1: SKIPPED ($2)"
  printf '%s\t%s\t0\t%s\n' "$1" "${3:-skipped}" "$2" >> "$PHASES"
}

summary() {  # lease-summary.json: the budget, what the setup check found, every phase
  "$PY" - "$PHASES" "$OUT/lease-summary.json" "$WORK/check.json" "$BUDGET" "$SECONDS" "$ENV_ID" "$EXPERIMENT" \
    "${TRAIN_MINUTES:-}" <<'PYEOF'
import json, os, sys
phases_tsv, out, check, budget, elapsed, env, experiment, minutes = sys.argv[1:9]
phases = []
for line in open(phases_tsv):
    name, rc, secs, cmd = line.rstrip("\n").split("\t", 3)
    phases.append({"phase": name, "exit": int(rc) if rc.lstrip("-").isdigit() else rc, "seconds": int(secs),
                   "command": cmd})
info = {"budget_s": int(budget), "elapsed_s_at_pack": int(elapsed), "env": env, "experiment": experiment,
        "train_time_limit_minutes": float(minutes) if minutes else None}
if os.path.exists(check):  # versions and machine, from the setup check
    info.update(json.load(open(check)))
json.dump({**info, "phases": phases}, open(out, "w"), indent=2)
PYEOF
}

PACKED=0
pack() {
  ((PACKED)) && return 0
  PACKED=1
  say "phase pack: start"
  local tag bench_json
  for f in "$WORK"/results/bench/*.json; do
    [[ -e $f ]] || continue
    tag=$(basename "$f" .json)
    bench_json="$OUT/bench-$tag.json"
    cp "$f" "$bench_json"
  done
  tar -czf "$OUT/lease-results.tar.gz" -C "$WORK" --exclude='checkpoint.pt' --exclude='*.tmp' results \
    || say "pack: tar FAILED"
  summary || { say "pack: summary FAILED, phases as TSV"; cp "$PHASES" "$OUT/lease-summary.json"; }
  local n=0 bad=0 size
  for f in "$OUT"/*; do  # lease.log included; its size is bounded below, once it is closed
    [[ -f $f ]] || continue
    n=$((n + 1))
    size=$(stat -c %s "$f")
    echo "  $(basename "$f"): $size bytes"
    if [[ $f != "$OUT/lease.log" ]] && ((size > MAX_BYTES)); then say "pack: $f is over 16 MiB"; bad=1; fi
  done
  ((n <= MAX_FILES)) || { say "pack: $n files in $OUT, more than $MAX_FILES"; bad=1; }
  say "pack: done, $n files$( ((bad)) && echo ', LIMITS EXCEEDED')"
  # close the log (tee ends), then bound its size: keep its tail
  exec 1>&3 2>&4
  for _ in $(seq 50); do kill -0 "$TEE_PID" 2>/dev/null || break; sleep 0.1; done  # tee flushes and ends
  if (($(stat -c %s "$OUT/lease.log") > MAX_BYTES)); then
    tail -c $((MAX_BYTES - 100)) "$OUT/lease.log" > "$OUT/lease.log.tail" && mv "$OUT/lease.log.tail" "$OUT/lease.log"
  fi
  n=$(find "$OUT" -maxdepth 1 -type f | wc -l)
  local verdict="at most $MAX_FILES, each < 16 MiB"
  ((bad == 0 && n <= MAX_FILES)) || verdict="LIMITS EXCEEDED"
  echo "=== [$(stamp)] lease done: $n files in $OUT ($verdict)"
}
trap pack EXIT
trap 'say "interrupted"; exit 143' TERM INT

# --- 1. setup ---------------------------------------------------------------------------------------------------
say "lease: budget ${BUDGET}s, OUT=$OUT, work=$WORK, python=$PY ($("$PY" --version 2>&1))"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # softq itself, without installing it
if "$PY" -c "import ale_py, gymnasium" 2>/dev/null; then
  say "phase setup: ale_py and gymnasium import: nothing to install"
elif compgen -G "$WHEELS/*.whl" > /dev/null; then
  pyver=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  compgen -G "$WHEELS/ale_py-*-$pyver-*.whl" > /dev/null \
    || say "WARNING: no ale_py wheel for $pyver in $WHEELS ($(cd "$WHEELS" && echo ./*.whl)): the install will fail"
  phase install "120" "$PY" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" \
    gymnasium ale-py
  SITE=$WORK/site
  if ! "$PY" -c "import ale_py, gymnasium" 2>/dev/null; then  # e.g. an externally managed Python, a missing dep
    phase install-target "120" "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps \
      --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:$SITE"
  fi
  if ! "$PY" -c "import ale_py, gymnasium" 2>/dev/null; then  # no pip at all: a wheel is a zip of what it installs
    phase install-unzip "60" "$PY" -c \
      "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" "$SITE" "$WHEELS"/*.whl
  fi
else
  say "WARNING: ale_py/gymnasium missing and no wheels in $WHEELS (bash ../shared/tools/device-wheels.sh, carry .whl)"
fi
READY=1
phase check 120 "$PY" -c "
import json, os, sys, softq.rl.agents.a2c
from softq.rl.experiments.provenance import machine, versions
info = {'versions': versions(), 'machine': machine()}
import torch
info['cuda'] = torch.cuda.is_available()
print(json.dumps(info))
json.dump(info, open(sys.argv[1], 'w'))
" "$WORK/check.json"
((LAST_RC == 0)) || { READY=0; say "WARNING: softq.rl cannot run here: bench and training are skipped"; }
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

# --- 2. bench ---------------------------------------------------------------------------------------------------
bench_t0=$SECONDS
i=0
IFS=';' read -r -a BENCH_CALLS <<< "$BENCH"
for args in "${BENCH_CALLS[@]}"; do
  [[ -n ${args// /} ]] || continue
  i=$((i + 1))
  left=$((BENCH_BUDGET - (SECONDS - bench_t0)))
  if ((!READY)); then skip "bench-$i" "setup failed"; continue; fi
  if ((left < 15)); then skip "bench-$i" "bench budget spent (${BENCH_BUDGET}s): $args" no-time; continue; fi
  # shellcheck disable=SC2086  # $args: several options on purpose
  phase "bench-$i" "$left" "$PY" -m softq.rl bench --seconds "$BENCH_S" --out "$WORK/results/bench" $args
done

# --- 3. train ---------------------------------------------------------------------------------------------------
left=$((BUDGET - SECONDS - PACK_S))  # seconds for the training phase, start and stop included
n_runs=$(($(tr ',' '\n' <<< "$RULES" | grep -c .) * $(tr ',' '\n' <<< "$SEEDS" | grep -c .)))
waves=$(((n_runs + PARALLEL - 1) / PARALLEL))  # runs one after another when --parallel is below their number
TRAIN_MINUTES=$(awk -v s=$((left - STARTUP_S)) -v w=$waves \
  'BEGIN { m = s / w / 60; printf "%.2f", (m > 0.01 ? m : 0.01) }')  # 0 would mean no limit
if ((!READY)); then
  skip train "setup failed"
elif ((left - STARTUP_S < 6)); then
  skip train "no time left: ${left}s for start (${STARTUP_S}s) and training" no-time
else
  say "training: ${left}s left -> $n_runs runs in $waves wave(s) of --time-limit-minutes $TRAIN_MINUTES" \
    "(+ ${STARTUP_S}s start/stop, ${PACK_S}s pack)"
  # shellcheck disable=SC2086  # $TRAIN_ARGS: several options on purpose
  phase train "$((left > 20 ? left - 10 : 10))" "$PY" -m softq.rl train --env "$ENV_ID" --rules "$RULES" \
    --seeds "$SEEDS" --parallel "$PARALLEL" --frames "$FRAMES" --time-limit-minutes "$TRAIN_MINUTES" --no-progress \
    --experiment "$EXPERIMENT" --results "$WORK/results" $TRAIN_ARGS
  while ((LAST_RC == 124 && SECONDS < BUDGET - PACK_S)); do  # cut by the hard timeout: runs may still be pausing
    grep -qs '"running"' "$WORK/results/$EXPERIMENT"/*/*/status.json 2>/dev/null || break
    sleep 1
  done
  for d in "$WORK/results/$EXPERIMENT"/*/*/; do
    [[ -d $d ]] || continue
    echo "--- ${d#"$WORK"/}: $(tr -d '\n ' < "$d/status.json" 2>/dev/null)"
    tail -n 2 "$d/progress.csv" 2>/dev/null || true
  done
fi

# --- 4. pack (the EXIT trap) ------------------------------------------------------------------------------------
# failures: any phase but the install attempts (the check after them decides) that did not exit 0
failed=$(awk -F'\t' '$1 !~ /^install/ && $2 != "0" && $2 != "skipped"' "$PHASES" | wc -l)
say "phases: $(awk -F'\t' '{printf "%s=%s ", $1, $2}' "$PHASES")"
pack
((failed == 0)) || exit 1

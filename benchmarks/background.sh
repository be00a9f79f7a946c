#!/usr/bin/env bash
# The long accuracy grids as background runners, one thread each (one per core on a 2-core machine). On a fresh
# machine, first: ./setup.sh --with smollm2-135m --with gemma3-270m (the decoder grid's two models).
#
#   benchmarks/background.sh start     # start what is not running: the reproduction's issue-24 arms, the decoder grid
#   benchmarks/background.sh status    # the runners and their training processes; for one that ended, its log's end
#   benchmarks/background.sh pause     # SIGSTOP them (before timing anything), `resume` to go on
#   benchmarks/background.sh stop      # end them; a prefix run resumes from its last epoch on the next start
#
# Both grids skip what is recorded, resume a run from its last checkpoint, and commit each record as it arrives
# (--commit), so a session that ends mid-run loses at most the epoch in progress. The encoder runner hands its core
# to a second decoder runner when its grid has nothing left (the decoder grid's runners claim runs, so two share it).
# Logs: runs/logs/<runner>.log (the second decoder runner: decoder-2.log; BENCH_LOGS: another folder).
# BENCH_ENCODER_ARGS overrides the reproduction runner's selection (default: issue 24's experiments);
# BENCH_PYTHON, BENCH_ENCODER_SCRIPT and BENCH_DECODER_SCRIPT stand in for the interpreter and the two grids.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${BENCH_PYTHON:-.venv/bin/python}
LOGS=${BENCH_LOGS:-runs/logs}
ENCODER_ARGS=${BENCH_ENCODER_ARGS:-"--only lr-sweep --only exact-start --task cb --task copa --task conll04 --by-task"}
declare -A SCRIPT=([encoder]=${BENCH_ENCODER_SCRIPT:-benchmarks/reproduce/run.py}
                   [decoder]=${BENCH_DECODER_SCRIPT:-benchmarks/decoder/grid.py})
# Names the shell that runs the encoder grid, then a second decoder runner (its grid in the name: a stand-in's is
# not the real one's).
CHAIN="adaprefix-encoder-then-decoder:${SCRIPT[encoder]}"

pids() {  # the runner's own python processes and the training processes they started
  local runner=$1 parents
  parents=$(ps -ww -eo pid=,args= | awk -v s="${SCRIPT[$runner]}" '$2 ~ /python/ && index($0, s) {print $1}')
  # ps pads a pid to its column's width: " 6901" would make `ps -p 6858, 6901` an improper list
  for p in $parents; do echo "$p"; ps -o pid= --ppid "$p" | awk '{print $1}' || true; done
}

chain_pids() {  # the shell waiting to start the second decoder runner once the encoder grid is done
  ps -ww -eo pid=,args= | awk -v c="$CHAIN" 'index($0, c) && $2 !~ /awk/ {print $1}'
}

case "${1:-status}" in
  start)
    if ! command -v "$PY" > /dev/null; then
      echo "background.sh: no interpreter $PY: run ./setup.sh --with smollm2-135m --with gemma3-270m first (the" \
           "decoder grid's models)" >&2
      exit 1
    fi
    mkdir -p "$LOGS"
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    if [ -n "$(pids encoder)$(chain_pids)" ]; then echo "encoder: already running"; else
      # shellcheck disable=SC2016
      nohup bash -c '"$1" "$2" --commit $3 >> "$5/encoder.log" 2>&1
                     exec "$1" "$4" --commit >> "$5/decoder-2.log" 2>&1' \
        "$CHAIN" "$PY" "${SCRIPT[encoder]}" "$ENCODER_ARGS" "${SCRIPT[decoder]}" "$LOGS" > /dev/null 2>&1 &
      echo "encoder: started (pid $!, log $LOGS/encoder.log; then a second decoder runner, $LOGS/decoder-2.log)"
    fi
    if [ -n "$(pids decoder)" ]; then echo "decoder: already running"; else
      nohup "$PY" "${SCRIPT[decoder]}" --commit >> "$LOGS/decoder.log" 2>&1 &
      echo "decoder: started (pid $!, log $LOGS/decoder.log)"
    fi ;;
  stop|pause|resume)
    signal=$([ "$1" = stop ] && echo TERM || ([ "$1" = pause ] && echo STOP || echo CONT))
    # the chain first, so that stopping the encoder runner does not start a decoder runner in its place
    for p in $(chain_pids) $(pids encoder) $(pids decoder); do kill -s "$signal" "$p" 2>/dev/null || true; done ;;
  status)
    for runner in encoder decoder; do
      list=$(pids $runner | paste -sd, -)
      if [ -z "$list" ]; then
        # why it is not running, where its log says (a progress bar's line: its last state)
        log="$LOGS/$runner.log"
        last=$([ -f "$log" ] && tail -n 5 "$log" | tr '\r' '\n' | grep -v '^ *$' | tail -n 1 || true)
        echo "$runner: not running${last:+ (its log ends: ${last:0:160})}"
      else ps -o pid,stat,etime,args -p "$list" | cut -c1-150; fi
    done ;;
  *) echo "usage: benchmarks/background.sh start|status|pause|resume|stop" >&2; exit 2 ;;
esac

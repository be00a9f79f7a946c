#!/usr/bin/env bash
# The long accuracy grids as background runners, one thread each (one per core on a 2-core machine):
#
#   benchmarks/background.sh start     # start what is not running: the reproduction's issue-24 arms, the decoder grid
#   benchmarks/background.sh status    # the runners and their training processes
#   benchmarks/background.sh pause     # SIGSTOP them (before timing anything), `resume` to go on
#   benchmarks/background.sh stop      # end them; a prefix run resumes from its last epoch on the next start
#
# Both grids skip what is recorded, resume a run from its last checkpoint, and commit each record as it arrives
# (--commit), so a session that ends mid-run loses at most the epoch in progress. Logs: runs/logs/<runner>.log.
# BENCH_ENCODER_ARGS overrides the reproduction runner's selection (default: issue 24's experiments).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
ENCODER_ARGS=${BENCH_ENCODER_ARGS:-"--only lr-sweep --only exact-start --task cb --task copa --task conll04 --by-task"}
declare -A SCRIPT=([encoder]=benchmarks/reproduce/run.py [decoder]=benchmarks/decoder/grid.py)

pids() {  # the runner's own python process and the training processes it started
  local runner=$1 parents
  parents=$(ps -ww -eo pid=,args= | awk -v s="${SCRIPT[$runner]}" '$2 ~ /python/ && index($0, s) {print $1}')
  # ps pads a pid to its column's width: " 6901" would make `ps -p 6858, 6901` an improper list
  for p in $parents; do echo "$p"; ps -o pid= --ppid "$p" | awk '{print $1}' || true; done
}

case "${1:-status}" in
  start)
    mkdir -p runs/logs
    for runner in encoder decoder; do
      if [ -n "$(pids $runner)" ]; then echo "$runner: already running"; continue; fi
      args="--commit"; [ $runner = encoder ] && args="--commit $ENCODER_ARGS"
      # shellcheck disable=SC2086
      OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nohup $PY "${SCRIPT[$runner]}" $args >> "runs/logs/$runner.log" 2>&1 &
      echo "$runner: started (pid $!, log runs/logs/$runner.log)"
    done ;;
  stop|pause|resume)
    signal=$([ "$1" = stop ] && echo TERM || ([ "$1" = pause ] && echo STOP || echo CONT))
    for runner in encoder decoder; do
      for p in $(pids $runner); do kill -s "$signal" "$p" 2>/dev/null || true; done
    done ;;
  status)
    for runner in encoder decoder; do
      list=$(pids $runner | paste -sd, -)
      if [ -z "$list" ]; then echo "$runner: not running"; else ps -o pid,stat,etime,args -p "$list" | cut -c1-150; fi
    done ;;
  *) echo "usage: benchmarks/background.sh start|status|pause|resume|stop" >&2; exit 2 ;;
esac

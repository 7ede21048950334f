#!/bin/bash
# Several label_efficiency.py runs side by side on one GPU, all stopped SECONDS after the start:
# for a GPU lent for a fixed window. One small DeepLabv3+ at batch 4 leaves a GPU waiting on kernel
# launches; with three runs an H100 read 80-100% busy most of the time (benchmarks/README.md, "GPU
# runs"). Runs that finish write their result JSON; stopped ones keep their run folder, whose
# metrics.jsonl holds every evaluation so far (benchmarks/learning_curves.py) and which the same
# command resumes.
#
#   benchmarks/gpu_window.sh SECONDS LOGS "ARGS OF RUN 1" "ARGS OF RUN 2" ...
#   benchmarks/gpu_window.sh 560 /tmp/logs "--protocol paper --methods sup_10 --seeds 0" \
#       "--protocol paper --methods ssl_10 --seeds 0"
#
# PYTHON (default python3) runs the script; each run logs to LOGS/<n>.log, GPU use goes to
# LOGS/gpu_utilisation.txt (nvidia-smi dmon, every 10 s).
set -u
if [ $# -lt 3 ]; then sed -n '2,14p' "$0"; exit 2; fi
seconds=$1 logs=$2; shift 2
here=$(dirname "$0")
mkdir -p "$logs"
nvidia-smi dmon -s u -d 10 > "$logs/gpu_utilisation.txt" 2>&1 & dmon=$!
pids=() n=0
for args in "$@"; do
  n=$((n + 1))
  echo "run $n: $args" > "$logs/$n.log"
  # INT lets Python unwind (the loader workers exit with it); KILL 15 s later if it does not.
  timeout -k 15 -s INT "$seconds" ${PYTHON:-python3} "$here/label_efficiency.py" $args >> "$logs/$n.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
kill "$dmon" 2>/dev/null
exit $status

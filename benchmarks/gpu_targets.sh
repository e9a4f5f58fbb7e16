#!/usr/bin/env bash
# The GPU targets of the accelerator work, measured in one go on a lent GPU machine (see
# ../shared/gpu/README.md: prepare .gpu/ first, carry it, then one command):
#
#   source .gpu/setup.sh && bash benchmarks/gpu_targets.sh
#
# Each measurement runs under its own timeout, so one that hangs cannot eat the machine's time; a line per
# measurement (exit code, seconds) goes to $OUT/summary.txt, and the logs, benchmark JSON and the runs'
# config/metrics/report files to $OUT/results.tgz (two files: the device tool brings back at most eight).
# QUICK=1 runs every step at smoke-test size (on any device: it checks the script, measures nothing).
set -u
out=${OUT:-gpu-out}
work=$(mktemp -d)
mkdir -p "$out" "$work/runs"
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
quick=()
[ "${QUICK:-0}" = 1 ] && quick=(--quick)

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a timeout, its output in NAME.log
  local name=$1 limit=$2 started rc
  shift 2
  started=$SECONDS
  timeout "$limit" "$@" > "$work/$name.log" 2>&1
  rc=$?
  printf '%-18s rc=%-3s %4d s\n' "$name" "$rc" "$((SECONDS - started))" >> "$out/summary.txt"
  tail -3 "$work/$name.log" | sed 's/^/    /' >> "$out/summary.txt"
}

run() {  # run NAME SECONDS EXPERIMENT OPTIONS...: a dlclassics run on the device, its folder under runs/
  local name=$1 limit=$2
  shift 2
  step "$name" "$limit" "$python" -m dlclassics run "$@" --device "$device" --out "$work/runs" --no-site \
    --quiet "${quick[@]}"
}

{ date -u; nvidia-smi -L 2>/dev/null; "$python" -c "import torch; print('torch', torch.__version__)"; } \
  > "$out/summary.txt" 2>&1

# Targets: the engine >= 5x a plain loop on the MLP retraining; the CNN's rate against the matmul peak.
step bench_gpu 240 "$python" benchmarks/bench_gpu.py --json "$work/bench_gpu.json" "${quick[@]}"
# Stacked search trials against one at a time (16 at once: fashion-mlp's GPU default).
step bench_trials 180 "$python" benchmarks/bench_trials.py --device "$device" --trials 16 \
  --json "$work/bench_trials.json" "${quick[@]}"
# fashion-mlp, the whole run <= 10 s at the CPU run's accuracy (0.9042, within 0.003).
run fashion-mlp 120 fashion-mlp
# cifar-cnn tuned on the stand-in: >= 0.945 test accuracy in <= 4 s of training.
run cifar-cnn 150 cifar-cnn --dataset fashion-mnist
# mnist-classifier, 10 epochs <= 2 s of training.
run mnist-classifier 120 mnist-classifier --dataset fashion-mnist --epochs 10

for folder in "$work"/runs/*/*/; do
  [ -f "$folder/metrics.json" ] || continue
  printf '%s: %s\n' "$(basename "$(dirname "$folder")")" \
    "$("$python" -c "import json,sys; m=json.load(open(sys.argv[1])); print({k: m[k] for k in m if k in ('test_accuracy', 'train_time_s', 'wall_time_s', 'best_val_accuracy')})" "$folder/metrics.json")" \
    >> "$out/summary.txt"
done
find "$work/runs" -name '*.pt' -delete -o -name '*.png' -delete -o -name '*.npz' -delete -o -name '*.journal' -delete
tar czf "$out/results.tgz" -C "$work" .
cat "$out/summary.txt"

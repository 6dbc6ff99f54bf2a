#!/usr/bin/env bash
# One baseline at a time, nice'd, 1 torch thread (2 cores shared with other jobs).
set -u
export MINARI_DATASETS_PATH=/tmp/baselines-data HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true
mkdir -p /tmp/baselines-meas && cd /tmp/baselines-meas
for spec in bc:10000 td3bc:10000 iql:10000 cql:2000; do
  algo=${spec%%:*}; steps=${spec##*:}
  start=$(date +%s)
  nice -n 10 /work/main/.venv/bin/lamo-scale baseline --algo "$algo" --config paper/hopper-medium-r1-lamo \
    --steps "$steps" train.threads=1 train.checkpoint_every=$((steps / 5)) train.log_every=500 \
    tracking.uri=sqlite:////tmp/baselines-meas/mlflow.db tracking.experiment=baselines-hopper-medium \
    "tracking.tags={task: hopper-medium}" tracking.run_name="$algo-$steps" \
    train.output_dir=/tmp/baselines-meas/runs/{run_name} > "log-$algo.txt" 2>&1
  echo "$algo rc=$? wall_s=$(( $(date +%s) - start )) $(tail -1 log-$algo.txt)"
done

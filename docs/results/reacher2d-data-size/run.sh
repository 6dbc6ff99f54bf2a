#!/bin/bash
# Recipe fixed before any seed runs: the paper's DT (quickstart-dt), 4000 steps x 64, lr 1e-4 cosine,
# on lamo/reacher2d/medium2k-v1 at data_ratio 1.0 (2000 episodes) vs 0.1 (200 episodes, ratio_seed 0);
# seeds 0 1 2; last checkpoint, 64 episodes per target, paper's score rule (best target).
export MINARI_DATASETS_PATH=/tmp/exp/minari HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true OMP_NUM_THREADS=1
B=/work/main/.venv/bin/lamo-scale
for seed in 0 1 2; do for ratio in 1.0 0.1; do
  out=/tmp/exp/runs/dt-r$ratio-s$seed
  [ -f $out.eval.txt ] && continue
  t0=$(date +%s)
  nice $B train --config quickstart-dt data.dataset=lamo/reacher2d/medium2k-v1 data.data_ratio=$ratio \
     train.steps=4000 train.batch_size=64 train.lr=1.0e-4 train.checkpoint_every=4000 train.seed=$seed train.threads=1 \
     tracking.uri=sqlite:////tmp/exp/mlruns.db train.output_dir=$out > $out.train.log 2>&1
  t1=$(date +%s)
  nice $B evaluate --checkpoint $out --episodes 64 --no-mlflow > $out.eval.txt 2>&1
  t2=$(date +%s)
  echo "dt ratio=$ratio seed=$seed train_s=$((t1-t0)) eval_s=$((t2-t1))" >> /tmp/exp/dt_size.times
done; done

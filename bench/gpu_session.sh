#!/usr/bin/env bash
# One GPU session: correctness of every path, the Triton block-size sweep and stage profile, then
# the step-speed tables (default nonfinite="skip", and "propagate" like for like with torch.optim) on
# real models' parameter lists (GPT-2 small, ResNet-50, 600 small tensors) and the uniform layouts.
# Results go to $OUT (default ./gpu-results). Run from the repository root:  bash bench/gpu_session.sh
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/card.txt"
python3 bench/gpu_check.py 2>&1 | tee "$OUT/check.txt"
python3 bench/gpu_profile.py --env "$OUT/best.env" 2>&1 | tee "$OUT/profile.txt"
[ -f "$OUT/best.env" ] && source "$OUT/best.env"
for mode in skip propagate; do
  python3 bench/step_speed.py --device cuda --layouts gpt2-small resnet50 600x2k 50x200k 100x1M 1000x10k \
    --repeats 20 --nonfinite $mode \
    --markdown "$OUT/speed-$mode.md" 2>&1 | tail -3
done

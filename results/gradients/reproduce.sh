#!/usr/bin/env bash
# Gradient flow of the unidirectional built-in models on recall at T = 100, at initialisation and at
# the end of training, default initialisation and chrono. Committed run: 16 CPU cores (Intel Xeon),
# torch 2.11.0, --workers 15, 1 min 20 s wall. Pass --workers/--threads to suit your machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
harness gradients --models rnn,lstm,gru,peephole,cifg --task recall --length 100 --seeds 3 \
  --model-opt init=default,chrono --at 0,end --hidden-size 64 --batch-size 32 --steps 1500 \
  --eval-every 50 --eval-size 256 --device cpu --threads 1 --quiet --out results/gradients "$@"
harness report results/gradients > results/gradients/report.md

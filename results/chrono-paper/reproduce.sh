#!/usr/bin/env bash
# Tallec & Ollivier (2018) on copy at T = 500: chrono vs default LSTM (README, "The chrono paper's copy
# result"). Resumable: on a fresh clone every trial is read back and only the figure is drawn again.
set -euo pipefail
cd "$(dirname "$0")/../.."
harness run --config results/chrono-paper/copy500.toml --no-plot "$@"
harness plot results/chrono-paper/copy500 --select all --curves lstm:copy --metric loss --out results/chrono-paper

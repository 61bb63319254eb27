#!/usr/bin/env bash
# The parts of the long-horizon reference still being measured (README, "How far back do they
# remember?"). Each command resumes its folder: run this again to continue, on any machine; trials
# already in a folder are read back, not trained. On a machine with many cores pass the executor:
#   bash results/horizons/continue.sh --executor ray --workers 16
# When a part is complete it moves to reproduce.sh (which must train nothing on a fresh clone).
# To stop without losing the trials in flight: kill -USR1 on the running harness process (it starts
# no new trial, saves the running ones, exits 138), then stop this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
# (Parts 1 to 3, the classic and the modern models on recall and adding to T = 10,000, are finished:
# reproduce.sh.)
harness horizon --config results/horizons/copy.toml "$@"
harness horizon --config results/horizons/selective.toml "$@"
parts=(results/horizons/{unidirectional,bidirectional,modern,copy,selective})
harness report "${parts[@]}" > results/horizons/report.md
harness plot "${parts[@]}" --out results/horizons

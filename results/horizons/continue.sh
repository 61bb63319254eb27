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
# Parts 1 and 2 beyond T = 1000: the same folders and settings; the budget grows above T = 1000.
frontier=(--max-length 10000)  # the budget rule is in the configs
harness horizon --config results/horizons/unidirectional.toml "${frontier[@]}" "$@"
harness horizon --config results/horizons/bidirectional.toml "${frontier[@]}" "$@"
harness horizon --config results/horizons/modern.toml "$@"
harness horizon --config results/horizons/copy.toml "$@"
harness horizon --config results/horizons/selective.toml "$@"
parts=(results/horizons/{unidirectional,bidirectional,modern,copy,selective})
harness report "${parts[@]}" > results/horizons/report.md
harness plot "${parts[@]}" --out results/horizons

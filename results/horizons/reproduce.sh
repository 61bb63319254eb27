#!/usr/bin/env bash
# The long-horizon reference's finished parts: every classic model's (parts 1 and 2) and every modern
# model's (part 3) memory horizon on recall and adding, 3 seeds, default initialisation and chrono, T
# from 5 up to 10,000 (the first search stopped at 1000; beyond it the budget grows with T, see the
# configs' steps_growth). Resumable: run it again to continue; on a fresh clone every trial is read
# back and none trains.
set -euo pipefail
cd "$(dirname "$0")/../.."
frontier=(--max-length 10000)
harness horizon --config results/horizons/unidirectional.toml "${frontier[@]}" "$@"
harness horizon --config results/horizons/bidirectional.toml "${frontier[@]}" "$@"
harness horizon --config results/horizons/modern.toml "$@"
harness report results/horizons/unidirectional results/horizons/bidirectional > results/horizons/report.md
harness plot results/horizons/unidirectional results/horizons/bidirectional --out results/horizons
harness report results/horizons/modern > results/horizons/modern/report.md
harness plot results/horizons/modern --out results/horizons/modern

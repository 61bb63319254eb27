#!/usr/bin/env bash
# The long-horizon reference: every built-in model's memory horizon on recall and adding, T up to
# 1000, 3 seeds, default initialisation and chrono. Resumable: run it again to continue.
set -euo pipefail
cd "$(dirname "$0")/../.."
harness horizon --config results/horizons/unidirectional.toml "$@"
harness horizon --config results/horizons/bidirectional.toml "$@"
harness report results/horizons/unidirectional results/horizons/bidirectional > results/horizons/report.md
harness plot results/horizons/unidirectional results/horizons/bidirectional --out results/horizons

#!/bin/sh
# The prepared GPU script (issue 17), from the source tree: see benchmarks/gpu.py.
cd "$(dirname "$0")/.." && PYTHONPATH=src exec python3 benchmarks/gpu.py "$@"

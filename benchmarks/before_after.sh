#!/usr/bin/env bash
# `make bench` (benchmarks/bench_sim.py) on an earlier revision and on this tree, side by
# side in one sitting, alternating: before, after, before, after.
#   benchmarks/before_after.sh REV [REPEATS]
# The earlier revision is checked out into a temporary worktree and run from its own
# source (its own bench_sim.py), with this tree's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: benchmarks/before_after.sh REV [REPEATS]}
repeats=${2:-5}
old=$(mktemp -d)
trap 'git worktree remove --force "$old" >/dev/null 2>&1 || rm -rf "$old"' EXIT
git worktree add --detach "$old" "$rev" >/dev/null 2>&1
for round in 1 2; do
    echo "== before ($rev), round $round"
    (cd "$old" && PYTHONPATH="$old/src" "$OLDPWD/.venv/bin/python" benchmarks/bench_sim.py \
        --repeats "$repeats")
    echo "== after ($(git rev-parse --short HEAD)), round $round"
    PYTHONPATH="$PWD/src" .venv/bin/python benchmarks/bench_sim.py --repeats "$repeats"
done

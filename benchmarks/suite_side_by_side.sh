#!/bin/bash
# The test suite's time against an older commit's, side by side (issue 18).
#
#   bash benchmarks/suite_side_by_side.sh [OLD_COMMIT] [ROUNDS]   # defaults: 5a178ba, 2
#   IDS_LIMIT=5 bash benchmarks/suite_side_by_side.sh 5a178ba 1     # a smoke run on 5 ids
#
# Runs the test ids both trees have (`--collect-only -q`, intersected) with
# each tree's own `make test` command, alternating old and new in each
# round, and prints wall and CPU (user + sys) seconds and their ratios.
# The old tree is a detached git worktree under /tmp; both use this
# checkout's .venv. Run it with nothing else on the machine: about
# 8 minutes a round on 2 cores.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=${1:-5a178ba}
ROUNDS=${2:-2}
PY=$ROOT/.venv/bin/python
WT=$(mktemp -d /tmp/hcl_old_XXXX)
OUT=$(mktemp -d /tmp/hcl_side_by_side_XXXX)
git -C "$ROOT" worktree add -q --detach "$WT" "$OLD"
trap 'git -C "$ROOT" worktree remove --force "$WT"' EXIT
(cd "$WT" && PYTHONPATH=$WT $PY -m pytest --collect-only -q -p no:cacheprovider 2>/dev/null \
  | grep "::" | sort > "$OUT/old_ids")
(cd "$ROOT" && $PY -m pytest --collect-only -q -p no:cacheprovider -m "not slow" 2>/dev/null \
  | grep "::" | sort > "$OUT/new_ids")
comm -12 "$OUT/old_ids" "$OUT/new_ids" > "$OUT/common_ids"
head -n "${IDS_LIMIT:-1000000}" "$OUT/common_ids" > "$OUT/ids"  # passed as @file: ids have spaces
echo "old $(wc -l < "$OUT/old_ids") ids, new $(wc -l < "$OUT/new_ids"), common $(wc -l < "$OUT/ids")"

timed() {  # timed NAME DIR PYTHONPATH ARGS...: prints "wall cpu" seconds
  local name=$1 dir=$2 path=$3; shift 3
  local start end
  start=$(date +%s.%N)
  (cd "$dir" && PYTHONPATH=$path TIMEFORMAT="%U %S" \
     bash -c "time $PY -m pytest -q -p no:cacheprovider $* @$OUT/ids > $OUT/$name.log 2>&1" \
     2> "$OUT/$name.cpu") || true
  end=$(date +%s.%N)
  echo "$(echo "$end - $start" | bc) $(awk '{print $1 + $2}' "$OUT/$name.cpu")"
}
for round in $(seq 1 "$ROUNDS"); do
  read -r old_wall old_cpu < <(timed "old$round" "$WT" "$WT" -n 2)
  read -r new_wall new_cpu < <(timed "new$round" "$ROOT" "$ROOT" -n 2 --dist loadgroup -m '"not slow"')
  printf "round %d: old %.1f s wall %.1f s CPU (%s) | new %.1f s wall %.1f s CPU (%s) | ratio wall %.2f CPU %.2f\n" \
    "$round" "$old_wall" "$old_cpu" "$(tail -1 "$OUT/old$round.log")" "$new_wall" "$new_cpu" \
    "$(tail -1 "$OUT/new$round.log")" "$(echo "$new_wall / $old_wall" | bc -l)" \
    "$(echo "$new_cpu / $old_cpu" | bc -l)"
done
echo "logs: $OUT"

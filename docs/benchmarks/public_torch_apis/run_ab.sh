#!/bin/bash
# Alternating A/B runs of ab_update.py and ab_step.py in one session (see their docstrings), one JSON line per run.
# Needs the old tree in /tmp/before: git archive 02488e3 | tar -x -C /tmp/before
set -u
HERE=docs/benchmarks/public_torch_apis
OUT=${OUT:-$HERE/results.jsonl}
ROUNDS=${ROUNDS:-5}
run() {  # run <ranks> <workload> <version>
  local launcher=(python)
  [ "$1" -gt 1 ] && launcher=(mpirun -np "$1" python)
  case $3 in
    after) env -u PYTHONPATH "${launcher[@]}" $HERE/ab_update.py "$2" ;;
    before) PYTHONPATH=/tmp/before "${launcher[@]}" $HERE/ab_update.py "$2" ;;
    before-autograd) PYTHONPATH=/tmp/before VARIANT=before-autograd "${launcher[@]}" $HERE/ab_update.py "$2" ;;
    after-module-forward) env -u PYTHONPATH VARIANT=module-forward "${launcher[@]}" $HERE/ab_update.py "$2" ;;
  esac | grep '^{' >> "$OUT"
}
# The whole train() call, one process per version, alternating: results.jsonl (UPDATE=0 skips it).
[ "${UPDATE:-1}" = 1 ] && for round in $(seq "$ROUNDS"); do
  for version in before after before-autograd; do run 1 cartpole "$version"; done
  run 1 cartpole after-module-forward
  for version in before after; do run 2 cartpole "$version"; done
  for ranks in 1 2; do
    for version in before after; do run "$ranks" minatar "$version"; done
  done
done

# The gradient step alone, all versions in one process in alternating blocks (ab_step.py): results_step.jsonl.
if [ "${STEP:-1}" = 1 ]; then
  for round in $(seq "$ROUNDS"); do
    for ranks in 1 2; do
      for workload in cartpole minatar; do
        launcher=(python)
        [ "$ranks" -gt 1 ] && launcher=(mpirun -np "$ranks" python)
        env -u PYTHONPATH "${launcher[@]}" $HERE/ab_step.py "$workload" | grep '^{' >> "${OUT_STEP:-$HERE/results_step.jsonl}"
      done
    done
  done
fi

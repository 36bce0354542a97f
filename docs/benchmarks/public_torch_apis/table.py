"""
The tables of run_ab.sh's results: per workload, ranks and version, the median over runs of each run's median
microseconds per gradient step (and per update for results.jsonl's whole train() calls, with the CPU time), and the
change from "before" (the old tree, private torch internals).

    python docs/benchmarks/public_torch_apis/table.py [results_step.jsonl]
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("results_step.jsonl"))
runs = defaultdict(list)
loads = []
for line in path.read_text().splitlines():
    row = json.loads(line)
    runs[(row["workload"], row["ranks"], row["version"])].append(row)
    loads.append(row["load"])
keys = [key for key in ("median_us", "median_cpu_us") if any(key in row for rows in runs.values() for row in rows)]
header = ["workload", "ranks", "version", "runs"] + [f"{'CPU' if 'cpu' in key else 'wall'} µs, vs before" for key in keys]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
order = ["before", "before-autograd", "after", "after-module-forward", "sampling"]
for (workload, ranks, version), rows in sorted(
    runs.items(), key=lambda item: (item[0][0], item[0][1], order.index(item[0][2]) if item[0][2] in order else 9)
):
    before = runs.get((workload, ranks, "before"), [])
    cells = [workload, str(ranks), version, str(len(rows))]
    for key in keys:
        median = statistics.median(row[key] for row in rows)
        change = ""
        if before and version not in ("before", "sampling"):
            change = f", {median / statistics.median(row[key] for row in before) - 1:+.0%}"
            if len(before) == len(rows):  # the same runs (ab_step.py: every version in each run): paired ratios
                paired = statistics.median(row[key] / first[key] for row, first in zip(rows, before, strict=True))
                change += f" (paired {paired - 1:+.0%})"
        cells.append(f"{median:.0f}{change}")
    print("| " + " | ".join(cells) + " |")
print(f"\n1-minute load average at the end of the runs: median {statistics.median(loads):.1f}, "
      f"range {min(loads):.1f}-{max(loads):.1f} (2 cores, other work running)")  # fmt: skip

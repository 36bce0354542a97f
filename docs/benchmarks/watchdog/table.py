"""Print the watchdog's cost table (docs/BENCHMARKS.md, "Watchdog") from results.jsonl beside this file."""

import json
from pathlib import Path

import numpy as np

rows = [json.loads(line) for line in (Path(__file__).parent / "results.jsonl").read_text().splitlines() if line.strip()]
on = [row for row in rows if row["watchdog"]]
off = [row for row in rows if not row["watchdog"]]
print(f"| measure (median of {len(on)} runs on, {len(off)} off) | watchdog off | watchdog on | change |")
print("|---|---|---|---|")
for key, label in (("update_median_us", "µs per update (train)"), ("allreduce_us", "µs per gradient Allreduce")):
    a, b = float(np.median([r[key] for r in off])), float(np.median([r[key] for r in on]))
    print(f"| {label} | {a:.1f} | {b:.1f} | {100 * (b / a - 1):+.1f}% |")

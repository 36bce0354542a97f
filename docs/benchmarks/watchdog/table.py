"""Print the watchdog's cost table (docs/BENCHMARKS.md, "Watchdog") from results.jsonl beside this file."""

import json
from pathlib import Path

import numpy as np

runs = [json.loads(line) for line in (Path(__file__).parent / "results.jsonl").read_text().splitlines() if line.strip()]
blocks = [block for run in runs for block in run["blocks"]]
print(f"| measure ({len(runs)} jobs, {len(blocks)} alternating blocks; median) | watchdog off | watchdog on | on / off |")
print("|---|---|---|---|")
for key, label in (("update_us", "µs per update (`train`)"), ("allreduce_us", "µs per gradient `Allreduce`")):
    on = [b[key] for b in blocks if b["on"]]
    off = [b[key] for b in blocks if not b["on"]]
    # Each "on" block with the "off" block right after it: the pairs share the machine's state of the moment.
    pairs = [a[key] / b[key] for a, b in zip(blocks[::2], blocks[1::2], strict=True) if a["on"] and not b["on"]]
    print(f"| {label} | {np.median(off):.1f} | {np.median(on):.1f} | {np.median(pairs):.3f} (paired) |")
print()
print("| job | update on / off (paired median) | `Allreduce` on / off (paired median) |")
print("|---|---|---|")
for number, run in enumerate(runs, 1):
    cells = []
    for key in ("update_us", "allreduce_us"):
        b = run["blocks"]
        pairs = [a[key] / c[key] for a, c in zip(b[::2], b[1::2], strict=True) if a["on"] and not c["on"]]
        cells.append(f"{np.median(pairs):.3f}")
    print(f"| {number} | {cells[0]} | {cells[1]} |")

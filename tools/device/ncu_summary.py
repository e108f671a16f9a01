#!/usr/bin/env python3
"""ncu_summary.py CSV [TOP]: sums an `ncu --csv --metrics gpu__time_duration.sum` log by kernel name
and prints the TOP kernels by total time (count, total ms, share, mean us)."""
import collections
import csv
import io
import sys

text = open(sys.argv[1], errors="replace").read()
start = text.find('"ID"')
rows = csv.DictReader(io.StringIO(text[start:]))
total = collections.defaultdict(float)
count = collections.Counter()
for r in rows:
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    value = float(r["Metric Value"].replace(",", ""))
    scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}[r["Metric Unit"]]
    name = r["Kernel Name"][:110]
    total[name] += value * scale
    count[name] += 1
grand = sum(total.values())
print(f"{sum(count.values())} kernels, {grand / 1e3:.3f} ms in total")
for name, us in sorted(total.items(), key=lambda kv: -kv[1])[: int(sys.argv[2]) if len(sys.argv) > 2 else 30]:
    print(f"{us / 1e3:9.3f} ms {100 * us / grand:5.1f}% {count[name]:6d}x {us / count[name]:9.1f} us  {name}")

#!/usr/bin/env python3
"""Kernel time by name from a CUPTI trace (bench/cupti_trace.cpp's CSV), for the last run in it.

  CUDA_INJECTION64_PATH=build-cuda/libcupti-trace.so FH1_TRACE_OUT=/dev/shm/t.csv \
      build-cuda/cuda-bench --models 1.5b-deep --prefill 8192 --decode-ctx 0 --batches 1
  python3 bench/trace_summary.py /dev/shm/t.csv

The last run: the kernels after the last gap of over 0.2 ms among segments of more than 1000
kernels. Per name: the summed durations, the time not overlapped with earlier kernels (a kernel
launched with programmatic dependent launch starts before the previous one ends and waits;
its duration counts that wait, its exclusive time does not), and the launches.
"""
import csv, sys, collections
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r['kind'] == 'kernel']
rows.sort(key=lambda r: int(r['start']))
segs, cur = [], [rows[0]]
for a, b in zip(rows, rows[1:]):
    if int(b['start']) - int(a['end']) > 200000:
        segs.append(cur); cur = []
    cur.append(b)
segs.append(cur)
seg = [s for s in segs if len(s) > 1000][-1]
span = (int(seg[-1]['end']) - int(seg[0]['start'])) / 1e6
agg = collections.defaultdict(lambda: [0.0, 0.0, 0])
prev_end = int(seg[0]['start'])
for r in seg:
    s, e = int(r['start']), int(r['end'])
    a = agg[r['name'][:60]]; a[0] += (e - s) / 1e6; a[1] += max(0, e - max(s, prev_end)) / 1e6; a[2] += 1
    prev_end = max(prev_end, e)
print(f"span {span:.2f} ms kernels {len(seg)}  (ms in all, ms not overlapped with earlier kernels, launches)")
for n, (t, x, c) in sorted(agg.items(), key=lambda x: -x[1][1])[:26]:
    print(f"{t:8.2f} {x:8.2f} {c:5d}  {n}")
print(f"sum {sum(a[0] for a in agg.values()):.2f} exclusive {sum(a[1] for a in agg.values()):.2f}")

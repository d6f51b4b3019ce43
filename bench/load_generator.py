#!/usr/bin/env python3
"""Load generator for `falcon-h1 serve`: requests/s, tokens/s and time to first token at several
numbers of concurrent streams. Prints figures; it is not a test. Standard library only.

    # against a running server
    python3 bench/load_generator.py --url http://127.0.0.1:8080
    # or start one (on the fixture model by default) and stop it afterwards
    python3 bench/load_generator.py --server build/falcon-h1 [--model DIR] [--server-args "--parallel 16"]

Each request is a streamed chat completion of --max-tokens tokens (ignore_eos, so every reply has
the same length) with a different short prompt. At each concurrency level C, C client threads send
--requests-per-stream requests each, one after the other.
"""

import argparse
import http.client
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

HERE = os.path.dirname(os.path.abspath(__file__))


def one_request(url, model, prompt, max_tokens):
    """Streams one chat completion; returns (seconds to first token, total seconds, tokens)."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
                       "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                       "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    first = None
    tokens = 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        if first is None and chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    conn.close()
    return (first if first is not None else total), total, tokens


def run_level(url, model, streams, per_stream, max_tokens):
    results, errors = [], []
    lock = threading.Lock()

    def client(k):
        for i in range(per_stream):
            try:
                r = one_request(url, model, f"Request {k}-{i}: tell me a story about number {k * 97 + i}",
                                max_tokens)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - counted and shown
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return wall, results, errors


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080")
    ap.add_argument("--server", help="falcon-h1 executable to start (instead of --url)")
    ap.add_argument("--model", default=os.path.join(HERE, "..", "tests", "fixtures", "server", "model"))
    ap.add_argument("--server-args", default="--parallel 16 --queue 256", help="extra `serve` options")
    ap.add_argument("--levels", default="1,4,16,64", help="concurrent streams, comma-separated")
    ap.add_argument("--requests-per-stream", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    if not args.url and not args.server:
        ap.error("give --url or --server")

    proc = None
    url = args.url
    if args.server:
        proc = subprocess.Popen([args.server, "serve", "-m", args.model, "--port", "0", "-q",
                                 *shlex.split(args.server_args)], stdout=subprocess.PIPE, text=True)
        m = re.search(r"listening on (http://\S+)", proc.stdout.readline())
        if not m:
            proc.kill()
            sys.exit("the server did not start")
        url = m.group(1)
    try:
        u = urlparse(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.request("GET", "/v1/models")
        model = json.loads(conn.getresponse().read())["data"][0]["id"]
        conn.close()
        one_request(url, model, "warm up", 4)
        print(f"server {url}, model '{model}', {args.max_tokens} tokens per reply, "
              f"{args.requests_per_stream} requests per stream")
        print(f"{'streams':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'tok/s':>9} "
              f"{'ttft mean':>10} {'ttft p50':>9} {'ttft p95':>9} {'tok/s/stream':>12}")
        for level in [int(x) for x in args.levels.split(",")]:
            wall, results, errors = run_level(url, model, level, args.requests_per_stream, args.max_tokens)
            if not results:
                print(f"{level:>7} {0:>8} {len(errors):>6}  all failed: {errors[:1]}")
                continue
            ttft = [r[0] for r in results]
            tokens = sum(r[2] for r in results)
            per_stream = statistics.mean(r[2] / max(r[1] - r[0], 1e-9) for r in results)
            print(f"{level:>7} {len(results):>8} {len(errors):>6} {len(results) / wall:>8.2f} {tokens / wall:>9.1f} "
                  f"{statistics.mean(ttft) * 1000:>8.1f}ms {pct(ttft, 50) * 1000:>7.1f}ms "
                  f"{pct(ttft, 95) * 1000:>7.1f}ms {per_stream:>12.1f}")
            if errors:
                print(f"        first error: {errors[0]}")
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Load benchmark for `qinfer serve`: total generated tokens per second at several
concurrency levels, streaming chat completions, standard library only.

    qinfer serve demo --port 8080 &          # or a real model
    python3 tools/bench_serve.py --url http://127.0.0.1:8080 --model qinfer-demo \
        --concurrency 1,4,16 --max-tokens 64

Each level runs `concurrency` client threads that each send `--requests-per-client`
requests back to back (`ignore_eos`, greedy, fixed `max_tokens`), and reports generated
tokens (from the usage chunk) over wall time, time to first token and per-stream decode rate.
"""

import argparse
import http.client
import json
import statistics
import threading
import time
from urllib.parse import urlparse


def one_request(url, model, max_tokens, prompt, key):
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "chat_template_kwargs": {"enable_thinking": False},
    })
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + key
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    first = None
    tokens = 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    conn.close()
    return tokens, first if first is not None else total, total


def level(args, concurrency):
    results = []
    lock = threading.Lock()

    def client(i):
        for r in range(args.requests_per_client):
            prompt = f"Client {i}, request {r}: write about the sea."
            out = one_request(args.url, args.model, args.max_tokens, prompt, args.api_key)
            with lock:
                results.append(out)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    tokens = sum(r[0] for r in results)
    ttft = statistics.median(r[1] for r in results)
    per_stream = statistics.median(
        (r[0] - 1) / max(r[2] - r[1], 1e-9) for r in results if r[0] > 1
    )
    return tokens, wall, ttft, per_stream


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--model", default="qinfer-demo")
    p.add_argument("--api-key", default=None)
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests-per-client", type=int, default=2)
    args = p.parse_args()
    one_request(args.url, args.model, 4, "warm up", args.api_key)
    print(f"{'streams':>7} {'tokens':>7} {'wall s':>7} {'total tok/s':>11} {'median TTFT s':>13} {'per-stream tok/s':>16}")
    for c in [int(x) for x in args.concurrency.split(",")]:
        tokens, wall, ttft, per_stream = level(args, c)
        print(f"{c:>7} {tokens:>7} {wall:>7.2f} {tokens / wall:>11.1f} {ttft:>13.3f} {per_stream:>16.1f}")


if __name__ == "__main__":
    main()

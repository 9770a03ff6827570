#!/usr/bin/env python3
"""Bounded load test of `lion serve` POST /v1/embed or /v1/caption (Python stdlib only, loopback only).

By default it starts `lion serve` itself once per --max-batch value (on 127.0.0.1, port 0),
drives it with C concurrent keep-alive clients for each concurrency level, and prints a markdown
table: throughput, latency percentiles, errors, and the mean batch size the server ran (from
/metrics). Every level stops after --duration seconds or --max-requests requests, whichever
comes first; the server is stopped with SIGTERM at the end.

    scripts/loadtest.py                                 # target/debug/lion, batches 1 and 32
    scripts/loadtest.py --lion target/release/lion --concurrency 1,4,16,32 --duration 8
    scripts/loadtest.py --url http://127.0.0.1:8080     # an already running server (loopback)
    scripts/loadtest.py --endpoint caption --batches 1,8  # the tiny LION preset, random weights
"""

import argparse
import base64
import http.client
import ipaddress
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib

SENTENCES = [
    "A man rides a bicycle down a busy city street.",
    "Two dogs play with a red ball in the park.",
    "A plate of pasta with tomato sauce and basil.",
    "The sun sets over the ocean behind a small sailboat.",
    "A child flies a kite on a windy beach.",
    "Several people wait for the train at the station.",
    "A cat sleeps on a stack of old books.",
    "A bowl of fresh fruit sits on the kitchen table.",
]


def png(width, height):
    """A small RGB gradient PNG (stdlib only)."""
    import struct

    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 128))
        for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def loopback_only(host):
    try:
        addrs = {ai[4][0] for ai in socket.getaddrinfo(host, None)}
    except socket.gaierror as e:
        sys.exit(f"cannot resolve {host}: {e}")
    for a in addrs:
        if not ipaddress.ip_address(a.split("%")[0]).is_loopback:
            sys.exit(f"refusing to load-test {host} ({a}): loopback addresses only")


def start_server(lion, embed_model, max_batch, max_wait_ms, queue, extra):
    cmd = [lion, "--log", "warn", "serve", "--addr", "127.0.0.1:0", "--embed-model", embed_model,
           "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--queue", str(queue)]
    cmd += extra
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        sys.exit(f"lion serve printed no address: {' '.join(cmd)}")
    host, port = line.rsplit(":", 1)
    return proc, host, int(port)


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def scrape(host, port, task):
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    vals = {}
    for line in text.splitlines():
        if (line.startswith("lion_batch_size_sum{") or line.startswith("lion_batch_size_count{")) \
                and f'task="{task}"' in line:
            name, v = line.rsplit(" ", 1)
            vals[name.split("{")[0]] = float(v)
    return vals.get("lion_batch_size_sum", 0.0), vals.get("lion_batch_size_count", 0.0)


def run_level(host, port, concurrency, duration, max_requests, texts_per_request, endpoint="embed",
              caption_body=None):
    lock = threading.Lock()
    latencies, errors, statuses = [], [0], {}
    issued = [0]
    deadline = time.monotonic() + duration

    def take():
        with lock:
            if issued[0] >= max_requests or time.monotonic() >= deadline:
                return None
            issued[0] += 1
            return issued[0]

    def client(cid):
        conn = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            n = take()
            if n is None:
                break
            if endpoint == "embed":
                inputs = [SENTENCES[(n + k + cid) % len(SENTENCES)] for k in range(texts_per_request)]
                body = json.dumps({"inputs": inputs})
            else:
                body = caption_body
            t0 = time.perf_counter()
            try:
                conn.request("POST", f"/v1/{endpoint}", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                dt = time.perf_counter() - t0
                with lock:
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    if resp.status == 200:
                        latencies.append(dt)
                    else:
                        errors[0] += 1
            except (OSError, http.client.HTTPException):
                with lock:
                    errors[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.close()

    b_sum0, b_cnt0 = scrape(host, port, endpoint)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 120)
    wall = time.perf_counter() - t0
    b_sum1, b_cnt1 = scrape(host, port, endpoint)
    latencies.sort()

    def pct(p):
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(round(p / 100 * (len(latencies) - 1))))] * 1000

    ok = len(latencies)
    batches = b_cnt1 - b_cnt0
    return {
        "ok": ok,
        "errors": errors[0],
        "statuses": statuses,
        "rps": ok / wall,
        "texts_per_s": ok * texts_per_request / wall,
        "p50": pct(50), "p90": pct(90), "p99": pct(99),
        "max": latencies[-1] * 1000 if latencies else float("nan"),
        "mean_batch": (b_sum1 - b_sum0) / batches if batches else float("nan"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lion", default="target/debug/lion", help="the lion binary to start")
    ap.add_argument("--embed-model", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--url", help="test this running server instead of starting one (loopback only)")
    ap.add_argument("--batches", default="1,32", help="--max-batch values to compare (comma list)")
    ap.add_argument("--max-wait-ms", type=int, default=5)
    ap.add_argument("--queue", type=int, default=256)
    ap.add_argument("--concurrency", default="1,4,16,32", help="client counts (comma list)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per level (upper bound)")
    ap.add_argument("--max-requests", type=int, default=5000, help="requests per level (upper bound)")
    ap.add_argument("--texts", type=int, default=1, help="texts per request (embed)")
    ap.add_argument("--endpoint", choices=["embed", "caption"], default="embed")
    ap.add_argument("--server-args", default="--preset tiny --random-weights",
                    help="more `lion serve` flags with --endpoint caption (the LION model)")
    ap.add_argument("--image-size", default="64x48", help="WxH of the generated caption image")
    ap.add_argument("--num-beams", type=int, default=5, help="caption beams (LION: 5)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="caption tokens at most")
    args = ap.parse_args()
    caption_body = None
    extra = []
    if args.endpoint == "caption":
        w, h = (int(v) for v in args.image_size.split("x"))
        caption_body = json.dumps({"image": base64.b64encode(png(w, h)).decode(),
                                   "num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens})
        extra = shlex.split(args.server_args)
    if args.duration <= 0 or args.duration > 120:
        sys.exit("--duration must be in (0, 120] seconds")
    levels = [int(c) for c in args.concurrency.split(",")]
    if max(levels) > 256:
        sys.exit("at most 256 concurrent clients")

    rows = []
    if args.url:
        u = urllib.parse.urlparse(args.url)
        loopback_only(u.hostname)
        targets = [("(running)", None, u.hostname, u.port or 80)]
    else:
        if not os.path.exists(args.lion):
            sys.exit(f"{args.lion} not found: cargo build -p lion-cli (or pass --lion)")
        targets = [(int(b), None, None, None) for b in args.batches.split(",")]

    for mb, _, host, port in targets:
        proc = None
        if host is None:
            proc, host, port = start_server(args.lion, args.embed_model, mb, args.max_wait_ms, args.queue, extra)
            loopback_only(host)
        try:
            run_level(host, port, 2, 1.0, 20, args.texts, args.endpoint, caption_body)  # warm-up
            for c in levels:
                r = run_level(host, port, c, args.duration, args.max_requests, args.texts, args.endpoint,
                              caption_body)
                rows.append((mb, c, r))
                print(f"max_batch={mb} concurrency={c}: {r['rps']:.1f} req/s, p50 {r['p50']:.1f} ms, "
                      f"p99 {r['p99']:.1f} ms, mean batch {r['mean_batch']:.2f}, errors {r['errors']} "
                      f"{r['statuses']}", file=sys.stderr, flush=True)
        finally:
            if proc is not None:
                stop_server(proc)

    if args.endpoint == "embed":
        what = f"POST /v1/embed, {args.texts} text(s) per request"
    else:
        what = (f"POST /v1/caption ({args.server_args}), {args.image_size} image, "
                f"{args.num_beams} beams, {args.max_new_tokens} new tokens at most")
    print(f"\n{what}, max wait {args.max_wait_ms} ms, "
          f"{args.duration:g} s or {args.max_requests} requests per level\n")
    print("| max batch | clients | req/s | texts/s | p50 ms | p90 ms | p99 ms | max ms | mean batch | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mb, c, r in rows:
        print(f"| {mb} | {c} | {r['rps']:.1f} | {r['texts_per_s']:.1f} | {r['p50']:.1f} | {r['p90']:.1f} | "
              f"{r['p99']:.1f} | {r['max']:.1f} | {r['mean_batch']:.2f} | {r['errors']} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Soak test of `lion serve` with hostile clients (Python stdlib only, loopback only, bounded in time).

Starts `lion serve` (port 0 on 127.0.0.1) and, for --duration seconds, runs at once:

- valid clients: keep-alive, POST /v1/embed, /v1/caption, /v1/vqa (multipart), /v1/ground, /v1/tags;
- invalid clients: malformed JSON, duplicate keys, a data:text/plain image, unknown fields, bad
  base64, a PNG header claiming 6000x6000, wrong Content-Type, unknown path, wrong method, a
  Content-Length over the body limit, a garbage request line, an oversized header;
- slow clients: a body trickled past the body timeout (expects 408) or just within it (expects 200);
- stalled clients: --stalled connections that send part of a request header (or nothing) and
  stall, reopened as the server closes them (the header timeout), and every --burst-every
  seconds a burst of --burst more that takes the server over --max-connections (the cap evicts
  the oldest stalled ones);
- a monitor: GET /health and the server's RSS (/proc) every second.

Then it checks /health, stops the clients, opens a partial request and a request in progress and
sends SIGTERM, and measures how long the server takes to exit. It prints a JSON summary and a
markdown table, and exits 1 if any check failed: a 5xx answer, a request sent without an answer, a
failed /health, RSS over --max-rss-mb, or a shutdown slower than the grace period plus --max-answer-s.

    scripts/soak.py                               # target/debug/lion, 180 s
    scripts/soak.py --lion target/release/lion --duration 60
"""

import argparse
import base64
import http.client
import json
import os
import random
import select
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadtest import SENTENCES, loopback_only, png  # noqa: E402

SERVER_FLAGS = {
    "--max-connections": "64",
    "--header-timeout-ms": "2000",
    "--body-timeout-ms": "3000",
    "--shutdown-grace-ms": "1000",
    "--timeout-ms": "20000",
    "--max-batch": "8",
    "--queue": "64",
}


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.status = {}      # kind -> {status: count}
        self.latency = {}     # endpoint -> [seconds] (valid 200s)
        self.unanswered = {}  # kind -> count of requests sent without an answer
        self.notes = []

    def add(self, kind, status, latency=None, endpoint=None):
        with self.lock:
            d = self.status.setdefault(kind, {})
            d[status] = d.get(status, 0) + 1
            if latency is not None and status == 200:
                self.latency.setdefault(endpoint, []).append(latency)

    def lost(self, kind, why):
        with self.lock:
            self.unanswered[kind] = self.unanswered.get(kind, 0) + 1
            if len(self.notes) < 20:
                self.notes.append(f"{kind}: {why}")


def raw_request(host, port, data, timeout=30.0, trickle=None):
    """Sends bytes on a fresh connection (optionally the last part trickled: (bytes, delay)) and
    reads until the server closes. Returns the status code, or None when no answer came."""
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        try:
            s.sendall(data)
        except OSError:
            pass  # answered and closed before the whole request was sent: read the answer
        if trickle:
            body, delay = trickle
            for i in range(len(body)):
                try:
                    s.sendall(body[i:i + 1])
                except OSError:
                    break  # answered (408) and closed: read the answer
                time.sleep(delay)
        raw = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            raw += chunk
    finally:
        s.close()
    if not raw.startswith(b"HTTP/1.1 "):
        return None
    return int(raw[9:12])


def multipart(fields, image):
    boundary = "soak-boundary-4e1f"
    out = b""
    for k, v in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").encode()
    out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + image + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", out


def valid_requests(image_b64, image):
    ct, mp = multipart({"question": "what shape is it?", "num_beams": "2", "max_new_tokens": "8"}, image)
    j = "application/json"
    return [
        ("embed", j, lambda n: json.dumps({"inputs": [SENTENCES[n % len(SENTENCES)]]})),
        ("caption", j, lambda n: json.dumps({"image": image_b64, "num_beams": 2, "max_new_tokens": 8})),
        ("vqa", ct, lambda n: mp),
        ("ground", j, lambda n: json.dumps({"image": image_b64, "expression": "the red circle",
                                            "num_beams": 1, "max_new_tokens": 12})),
        ("tags", j, lambda n: json.dumps({"image": f"data:image/png;base64,{image_b64}", "max_tags": 5})),
    ]


def valid_client(host, port, stats, stop, image_b64, image, seed):
    reqs = valid_requests(image_b64, image)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    n = seed
    while not stop.is_set():
        name, ct, body = reqs[n % len(reqs)]
        n += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", f"/v1/{name}", body(n), {"Content-Type": ct})
            r = conn.getresponse()
            r.read()
            stats.add("valid", r.status, time.perf_counter() - t0, name)
            if r.getheader("connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
        except (OSError, http.client.HTTPException) as e:
            stats.lost("valid", f"{name}: {e!r}")
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.close()


def invalid_requests(image_b64):
    def req(method, path, body=b"", ct="application/json", extra=""):
        if isinstance(body, str):
            body = body.encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\nContent-Type: {ct}\r\n"
                f"Content-Length: {len(body)}\r\n{extra}\r\n")
        return head.encode() + body

    # A real 4x4 PNG whose header claims 6000x6000 (CRC fixed up).
    bomb = bytearray(png(4, 4))
    bomb[16:24] = (6000).to_bytes(4, "big") * 2
    bomb[29:33] = (zlib.crc32(bytes(bomb[12:29])) & 0xFFFFFFFF).to_bytes(4, "big")
    bomb = bytes(bomb)
    return [
        ("malformed_json", req("POST", "/v1/embed", '{"inputs": ')),
        ("duplicate_key", req("POST", "/v1/vqa", f'{{"image": "{image_b64}", "question": "q", "image": "{image_b64}"}}')),
        ("data_text_plain", req("POST", "/v1/vqa", json.dumps({"image": f"data:text/plain;base64,{image_b64}", "question": "q"}))),
        ("unknown_field", req("POST", "/v1/caption", json.dumps({"image": image_b64, "temperature": 0.7}))),
        ("bad_base64", req("POST", "/v1/tags", json.dumps({"image": "@@not base64@@"}))),
        ("png_bomb", req("POST", "/v1/caption", json.dumps({"image": base64.b64encode(bomb).decode()}))),
        ("wrong_content_type", req("POST", "/v1/embed", "inputs=a", ct="text/plain")),
        ("unknown_path", req("GET", "/v1/nothing")),
        ("wrong_method", req("GET", "/v1/embed")),
        ("over_body_limit", req("POST", "/v1/embed", "", extra="X-Pad: 1\r\n").replace(
            b"Content-Length: 0", b"Content-Length: 999999999")),
        ("garbage_request_line", b"\x16\x03\x01\x02\x00 not http\r\n\r\n"),
        ("oversized_header", req("GET", "/health", extra="X-Big: " + "a" * 500_000 + "\r\n")),
    ]


# The server answers 431 and closes after reading part of the header; the client is still
# sending, so the answer may be lost to a connection reset on the client's side.
CLOSE_OK = {"oversized_header"}


def invalid_client(host, port, stats, stop, image_b64, seed):
    reqs = invalid_requests(image_b64)
    n = seed
    while not stop.is_set():
        name, data = reqs[n % len(reqs)]
        n += 1
        try:
            status = raw_request(host, port, data)
        except OSError as e:
            stats.lost("invalid", f"{name}: {e!r}")
            continue
        if status is None and name in CLOSE_OK:
            stats.add("invalid", "closed")
        elif status is None:
            stats.lost("invalid", f"{name}: no answer")
        else:
            stats.add("invalid", status)
            stats.add(f"invalid:{name}", status)


def slow_client(host, port, stats, stop, body_timeout_s, seed):
    n = seed
    while not stop.is_set():
        n += 1
        body = json.dumps({"inputs": [SENTENCES[n % len(SENTENCES)]]}).encode()
        late = n % 2 == 0
        # Late: the body takes twice the body timeout; in time: half of it.
        delay = (2.0 if late else 0.5) * body_timeout_s / len(body)
        head = (f"POST /v1/embed HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        kind = "slow_late" if late else "slow_in_time"
        try:
            status = raw_request(host, port, head, trickle=(body, delay))
        except OSError as e:
            stats.lost(kind, repr(e))
            continue
        if status is None:
            stats.lost(kind, "no answer")
        else:
            stats.add(kind, status)


def stalled_clients(host, port, stats, stop, count, lifetimes, burst=0, burst_every=0.0):
    partial = [b"", b"POST /v1/embed HTTP/1.1\r\nHost: soak\r\nContent-Le",
               b"GET /health HTTP/1.1\r\n", b"G"]
    open_socks = {}

    def opened():
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(random.choice(partial))
        s.setblocking(False)
        open_socks[s] = time.monotonic()

    next_burst = time.monotonic() + burst_every
    while not stop.is_set():
        want = count
        if burst and time.monotonic() >= next_burst:
            want = count + burst
            next_burst = time.monotonic() + burst_every
        while len(open_socks) < want and not stop.is_set():
            try:
                opened()
            except OSError as e:
                stats.lost("stalled_connect", repr(e))
                time.sleep(0.05)
                break
        r, _, _ = select.select(list(open_socks), [], [], 0.2)
        for s in r:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                lifetimes.append(time.monotonic() - open_socks.pop(s))
                s.close()
                stats.add("stalled", "closed_by_server")
    for s in open_socks:
        s.close()


def rss_kb(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def monitor(host, port, pid, stats, stop, samples):
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            c = http.client.HTTPConnection(host, port, timeout=10)
            c.request("GET", "/health")
            r = c.getresponse()
            body = r.read()
            c.close()
            ok = r.status == 200 and json.loads(body)["status"] == "ok"
            stats.add("health", r.status)
        except (OSError, http.client.HTTPException, ValueError) as e:
            ok = False
            stats.lost("health", repr(e))
        samples.append((time.perf_counter() - t0, ok, rss_kb(pid)))
        stop.wait(1.0)


def pct(v, p):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] * 1000


def scrape_metrics(host, port):
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    out = {}
    for line in text.splitlines():
        if line.startswith("lion_connection_events_total{") or line.startswith("lion_decoded_budget"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lion", default="target/debug/lion")
    ap.add_argument("--embed-model", default="models/all-MiniLM-L6-v2")
    ap.add_argument("--server-args", default="--preset tiny --random-weights --ram-random tiny",
                    help="model flags of lion serve")
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of mixed traffic (at most 900)")
    ap.add_argument("--valid", type=int, default=4, help="valid keep-alive clients")
    ap.add_argument("--invalid", type=int, default=2, help="clients sending invalid requests")
    ap.add_argument("--slow", type=int, default=2, help="slow-upload clients")
    ap.add_argument("--stalled", type=int, default=40, help="stalled connections held open")
    ap.add_argument("--burst", type=int, default=100, help="extra stalled connections in a burst")
    ap.add_argument("--burst-every", type=float, default=15.0, help="seconds between bursts")
    ap.add_argument("--max-rss-mb", type=float, default=2048.0, help="fail above this server RSS")
    ap.add_argument("--max-answer-s", type=float, default=10.0,
                    help="shutdown may take the grace period plus this (requests in progress)")
    args = ap.parse_args()
    if not 0 < args.duration <= 900:
        sys.exit("--duration must be in (0, 900] seconds")
    if not os.path.exists(args.lion):
        sys.exit(f"{args.lion} not found: cargo build -p lion-cli (or pass --lion)")
    busy = args.valid + args.invalid + args.slow + 4
    if busy >= int(SERVER_FLAGS["--max-connections"]):
        sys.exit("too many active clients for the connection cap")

    cmd = [args.lion, "--log", "warn", "serve", "--addr", "127.0.0.1:0", "--embed-model", args.embed_model]
    for k, v in SERVER_FLAGS.items():
        cmd += [k, v]
    cmd += shlex.split(args.server_args)
    log_path = os.environ.get(
        "SOAK_SERVER_LOG", os.path.join(tempfile.gettempdir(), "lion-soak-server.log")
    )
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = proc.stdout.readline().strip()
        if not line:
            sys.exit(f"lion serve printed no address (log: {log_path})")
        host, port = line.rsplit(":", 1)
        port = int(port)
        loopback_only(host)
        result = soak(args, proc, host, port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    print(json.dumps(result, indent=1, sort_keys=True))
    print_table(result)
    if result["failures"]:
        print("FAILED: " + "; ".join(result["failures"]), file=sys.stderr)
        sys.exit(1)


def soak(args, proc, host, port):
    image = png(64, 48)
    image_b64 = base64.b64encode(image).decode()
    grace_s = int(SERVER_FLAGS["--shutdown-grace-ms"]) / 1000
    body_timeout_s = int(SERVER_FLAGS["--body-timeout-ms"]) / 1000
    stats = Stats()
    stop = threading.Event()
    samples, lifetimes = [], []
    rss_start = rss_kb(proc.pid)
    threads = [threading.Thread(target=monitor, args=(host, port, proc.pid, stats, stop, samples))]
    threads += [threading.Thread(target=valid_client, args=(host, port, stats, stop, image_b64, image, i))
                for i in range(args.valid)]
    threads += [threading.Thread(target=invalid_client, args=(host, port, stats, stop, image_b64, 5 * i))
                for i in range(args.invalid)]
    threads += [threading.Thread(target=slow_client, args=(host, port, stats, stop, body_timeout_s, i))
                for i in range(args.slow)]
    threads.append(threading.Thread(target=stalled_clients,
                                    args=(host, port, stats, stop, args.stalled, lifetimes, args.burst,
                                          args.burst_every)))
    t0 = time.monotonic()
    for t in threads:
        t.start()
    while time.monotonic() - t0 < args.duration and proc.poll() is None:
        time.sleep(0.5)
        print(f"\r{time.monotonic() - t0:5.0f} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    alive = proc.poll() is None
    metrics = scrape_metrics(host, port) if alive else {}
    health_end = None
    if alive:
        c = http.client.HTTPConnection(host, port, timeout=10)
        c.request("GET", "/health")
        r = c.getresponse()
        health_end = (r.status, json.loads(r.read())["status"])
        c.close()
    rss_before_term = rss_kb(proc.pid)
    hwm = rss_kb(proc.pid, "VmHWM")

    # Shutdown with a partial header, a partial body and requests in progress.
    shutdown = {}
    if alive:
        held = [socket.create_connection((host, port)) for _ in range(2)]
        held[0].sendall(b"POST /v1/embed HTTP/1.1\r\nHost: soak\r\nContent-Ty")
        held[1].sendall(b"POST /v1/embed HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{\"inputs\"")
        answers = []

        def in_progress():
            c = http.client.HTTPConnection(host, port, timeout=60)
            try:
                # Long enough to be still running when SIGTERM comes.
                c.request("POST", "/v1/caption", json.dumps({"image": image_b64, "num_beams": 8,
                                                             "max_new_tokens": 128, "min_new_tokens": 128}),
                          {"Content-Type": "application/json"})
                answers.append(c.getresponse().status)
            except (OSError, http.client.HTTPException) as e:
                answers.append(repr(e))
        workers = [threading.Thread(target=in_progress) for _ in range(2)]
        for w in workers:
            w.start()
        time.sleep(0.3)
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=grace_s + args.max_answer_s + 30)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - t_term
        for w in workers:
            w.join(timeout=30)
        held[1].settimeout(5)
        try:
            partial_body_answer = held[1].recv(200).split(b"\r\n")[0].decode(errors="replace")
        except OSError as e:
            partial_body_answer = repr(e)
        for h in held:
            h.close()
        shutdown = {"exit_code": code, "seconds": round(took, 3), "grace_s": grace_s,
                    "in_progress_answers": answers, "partial_body_answer": partial_body_answer}

    valid_lat = [x for v in stats.latency.values() for x in v]
    five_xx = {k: {s: n for s, n in d.items() if isinstance(s, int) and s >= 500}
               for k, d in stats.status.items()}
    five_xx = {k: v for k, v in five_xx.items() if v}
    health_fail = sum(1 for _, ok, _ in samples if not ok)
    max_rss = max([r for _, _, r in samples if r] + [rss_before_term or 0])
    failures = []
    if not alive:
        failures.append(f"the server died (exit {proc.returncode})")
    if five_xx:
        failures.append(f"5xx answers: {five_xx}")
    if stats.unanswered:
        failures.append(f"requests without an answer: {stats.unanswered}")
    if health_fail:
        failures.append(f"{health_fail} failed /health probes")
    if health_end != (200, "ok"):
        failures.append(f"/health at the end: {health_end}")
    if max((hwm or 0), max_rss) / 1024 > args.max_rss_mb:
        failures.append(f"RSS {max(hwm or 0, max_rss) / 1024:.0f} MB over {args.max_rss_mb} MB")
    if shutdown.get("exit_code") != 0:
        failures.append(f"shutdown exit code {shutdown.get('exit_code')}")
    if shutdown and shutdown["seconds"] > grace_s + args.max_answer_s:
        failures.append(f"shutdown took {shutdown['seconds']} s")
    if shutdown and any(a != 200 for a in shutdown["in_progress_answers"]):
        failures.append(f"requests in progress at SIGTERM: {shutdown['in_progress_answers']}")
    return {
        "duration_s": args.duration,
        "clients": {"valid": args.valid, "invalid": args.invalid, "slow": args.slow, "stalled": args.stalled,
                    "burst": args.burst, "burst_every_s": args.burst_every},
        "server_flags": SERVER_FLAGS,
        "server_args": args.server_args,
        "statuses": {k: {str(s): n for s, n in sorted(d.items(), key=lambda x: str(x[0]))}
                     for k, d in sorted(stats.status.items())},
        "unanswered": stats.unanswered,
        "notes": stats.notes,
        "valid_latency_ms": {
            ep: {"n": len(v), "p50": round(pct(v, 50), 1), "p99": round(pct(v, 99), 1)}
            for ep, v in sorted(stats.latency.items())},
        "valid_all_ms": {"n": len(valid_lat), "p50": round(pct(valid_lat, 50), 1),
                         "p99": round(pct(valid_lat, 99), 1)},
        "health": {"probes": len(samples), "failed": health_fail,
                   "p50_ms": round(pct([s[0] for s in samples], 50), 1),
                   "max_ms": round(max([s[0] for s in samples] or [0]) * 1000, 1)},
        "stalled_lifetime_s": {"n": len(lifetimes), "p50": round(pct(lifetimes, 50) / 1000, 2),
                               "max": round(max(lifetimes or [0]), 2)},
        "rss_mb": {"start": round((rss_start or 0) / 1024, 1), "max_sampled": round(max_rss / 1024, 1),
                   "before_sigterm": round((rss_before_term or 0) / 1024, 1),
                   "peak_vmhwm": round((hwm or 0) / 1024, 1)},
        "server_metrics": metrics,
        "shutdown": shutdown,
        "failures": failures,
    }


def print_table(r):
    print("\n| kind | requests | statuses |")
    print("|---|---:|---|")
    for k, d in r["statuses"].items():
        if ":" in k:
            continue
        print(f"| {k} | {sum(d.values())} | {', '.join(f'{s}: {n}' for s, n in d.items())} |")
    v = r["valid_all_ms"]
    print(f"\nvalid requests: p50 {v['p50']} ms, p99 {v['p99']} ms ({v['n']}); "
          f"RSS start {r['rss_mb']['start']} MB, peak {r['rss_mb']['peak_vmhwm']} MB; "
          f"shutdown {r['shutdown'].get('seconds')} s (grace {r['shutdown'].get('grace_s')} s)")


if __name__ == "__main__":
    main()

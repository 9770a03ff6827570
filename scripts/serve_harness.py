"""Shared by scripts/openai_client_test.py and scripts/playground_browser_test.py: starts
`lion serve` on a loopback port with the tiny LION preset (random weights) and a tiny random RAM
tagger, makes test pictures, and calls the LION endpoints directly (stdlib only) for the
expected answers."""

import base64
import json
import os
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import zlib


def png(width, height, box=None):
    """An RGB PNG: a gradient with an optional red rectangle (x1, y1, x2, y2)."""

    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)

    def pixel(x, y):
        if box and box[0] <= x < box[2] and box[1] <= y < box[3]:
            return (220, 30, 40)
        return (x * 255 // width, y * 255 // height, 150)

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in pixel(x, y)) for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def data_url(png_bytes):
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode()


class Server:
    """`lion serve` on 127.0.0.1:0; stopped with SIGTERM (then killed) on close."""

    def __init__(self, lion, embed_model, extra=(), start_timeout=180):
        # one seeded random model and tagger (an unseeded draw differs per run, and a rare one
        # could make a check on its texts or tags fail by chance)
        cmd = [lion, "--log", "warn", "serve", "--preset", "tiny", "--random-weights",
               "--init-seed", "1", "--ram-random", "tiny", "--ram-init-seed", "1", "--addr", "127.0.0.1:0", "--embed-model", embed_model,
               *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        line = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(start_timeout)
        if not line or not line[0].strip():
            self.close()
            sys.exit(f"lion serve printed no address within {start_timeout} s: {' '.join(cmd)}")
        self.addr = line[0].strip()
        host = self.addr.rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "[::1]"):
            self.close()
            sys.exit(f"lion serve is not on loopback: {self.addr}")
        self.base = f"http://{self.addr}"

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def post_form(self, path, fields, image, timeout=120):
        """multipart/form-data POST with an `image` file part; (status, parsed JSON)."""
        boundary = uuid.uuid4().hex
        parts = []
        for k, v in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                         .encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                     f'filename="picture.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
                     + image + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        req = urllib.request.Request(self.base + path, data=body, method="POST", headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}"})
        return self._send(req, timeout)

    def post_json(self, path, obj, timeout=120):
        req = urllib.request.Request(self.base + path, data=json.dumps(obj).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        return self._send(req, timeout)

    @staticmethod
    def _send(req, timeout):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


class Checks:
    """Counts checks; a failed one is printed and makes the run fail at the end."""

    def __init__(self, name):
        self.name, self.passed, self.failed = name, 0, []
        self.t0 = time.time()

    def check(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed.append(what)
            print(f"FAIL: {what}", file=sys.stderr)

    def equal(self, got, want, what):
        self.check(got == want, f"{what}: got {got!r}, want {want!r}")

    def finish(self):
        took = time.time() - self.t0
        if self.failed:
            print(f"{self.name}: {len(self.failed)} of {self.passed + len(self.failed)} checks "
                  f"failed ({took:.1f} s)", file=sys.stderr)
            sys.exit(1)
        print(f"{self.name}: all {self.passed} checks passed ({took:.1f} s)")


def default_paths(root):
    return (os.path.join(root, "target", "debug", "lion"),
            os.path.join(root, "models", "all-MiniLM-L6-v2"))

#!/usr/bin/env bash
# The TLS test certificate of lion-server's https image fetch test (feature `https-images`):
# a self-signed CA for 127.0.0.1 / localhost, valid 100 years, and its key, written to
# crates/lion-server/tests/fixtures/tls/. Test-only: the key is public.
set -euo pipefail
out="$(dirname "$0")/../crates/lion-server/tests/fixtures/tls"
mkdir -p "$out"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500 \
  -subj "/CN=lion-rs test" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
  -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
  -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
# PKCS#8, as rustls reads it
openssl pkcs8 -topk8 -nocrypt -in "$out/key.pem" -out "$out/key.pem.tmp" && mv "$out/key.pem.tmp" "$out/key.pem"
echo "wrote $out/cert.pem and $out/key.pem"

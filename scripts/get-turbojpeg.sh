#!/usr/bin/env bash
# Makes libjpeg-turbo's TurboJPEG library (libturbojpeg.so.0) available, so that JPEGs are decoded
# exactly as Pillow decodes them (crates/lion-core/src/jpeg.rs loads it at run time; without it
# the pure-Rust decoder is used). Idempotent: installs the Debian/Ubuntu package libturbojpeg0
# only when the library is missing and apt-get can run (as root, or through sudo).
# Exit status 0 when the library is there at the end, 1 when not (the caller decides).
set -uo pipefail
have() {
  for l in ldconfig /sbin/ldconfig; do
    "$l" -p 2>/dev/null | grep -q 'libturbojpeg\.so\.0' && return 0
  done
  return 1
}
have && exit 0
if command -v apt-get >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  echo "installing libturbojpeg0 (Pillow-exact JPEG decoding)" >&2
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq libturbojpeg0; } >&2 || true
fi
have && exit 0
echo "libturbojpeg.so.0 not available: JPEGs are decoded by the pure-Rust decoder (within 1-2" \
  "levels of Pillow); install libjpeg-turbo's TurboJPEG library for exact decoding" >&2
exit 1

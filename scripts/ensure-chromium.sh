#!/usr/bin/env bash
# Installs Debian's chromium for the real-browser test when it is missing (never a browser download
# by the test tool itself). Needs root or sudo; prints why when it cannot.
set -u
[ -x /usr/bin/chromium ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
command -v apt-get >/dev/null || { echo "no apt-get: install chromium yourself"; exit 1; }
$SUDO apt-get update -qq >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
[ -x /usr/bin/chromium ]

#!/usr/bin/env bash
# Installs what building and testing falcon-h1 needs on Debian 12 (apt packages only; the
# Python packages some tests use are installed by scripts/test.sh into a virtualenv).
# Skips the install when everything is already there.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config git
  nlohmann-json3-dev libcli11-dev libpcre2-dev libutf8proc-dev libhwy-dev libcpp-httplib-dev libssl-dev
  zlib1g-dev libbrotli-dev
  libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev
  python3 python3-venv python3-pip
  chromium
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: build dependencies are installed"

#!/usr/bin/env bash
# System packages CloudPal needs on Debian 12, installed only when missing.
set -euo pipefail
pkgs=(wireguard-go wireguard-tools iproute2 nftables iputils-ping iperf3 zbar-tools dnsutils
      procps python3-venv
      # compute: apps run in QEMU microVMs booting the Debian kernel with a busybox initramfs
      qemu-system-x86 linux-image-amd64 busybox-static cpio e2fsprogs)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js runs the reference Hypercore peers; any node >= 18 with npm will do (the image may
# ship its own build, which Debian's nodejs/npm packages must not replace).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: need root to apt-get install ${missing[*]}" >&2
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

#!/usr/bin/env bash
# One-shot setup for a fresh Debian machine (Python 3.11, root or sudo):
# system libraries for open3d (+ offscreen rendering), torch from local disk, sparse3d editable + dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
pkgs="libusb-1.0-0 libvulkan1 mesa-vulkan-drivers"
if ! dpkg -s $pkgs >/dev/null 2>&1; then
  $SUDO apt-get update -q || true
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs
fi
python3 -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python3 -m pip install -q -e ".[dev]"

#!/usr/bin/env bash
# Real labelled images that ship inside Debian packages (see README, "Data"). Needs root for apt-get;
# skipped with a message where it is not available, since only the demo-model checks use them.
set -euo pipefail
packages=(mricron-data invesalius-examples insighttoolkit5-examples)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "install_data: please install ${missing[*]} (Debian packages) for the real-data checks" >&2
  exit 0
fi
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null

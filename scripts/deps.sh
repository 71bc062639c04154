#!/bin/sh
# scripts/deps.sh — installs the Debian 12 packages fedseg needs to build, test
# and run its default job, skipping those already present. Uses sudo when not
# root. The CUDA toolkit is optional (the CUDA backend is built when nvcc is
# found) and is not installed here.
set -eu
PKGS="build-essential cmake pkg-config libopenblas-dev libnifti2-dev nifti-bin libpng-dev zlib1g-dev mricron-data gnuplot-nox libgrpc-dev protobuf-c-compiler libprotobuf-c-dev libssl-dev openssl libsodium-dev libisal-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "fedseg: installing Debian packages:$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing

# docker/node.Dockerfile — the fedseg site node image (CUDA), built from the
# repository root:
#
#   docker build -f docker/node.Dockerfile -t fedseg-node .
#   docker run --rm --gpus all fedseg-node info --model ref
#
# Stage 1 (builder): CUDA 13 devel on Ubuntu 24.04 with the -dev packages fedseg
# needs; configures and builds fedseg (Release, CUDA backend for sm_90 + PTX,
# tests off). Stage 2 (runtime): the CUDA runtime image — it already carries
# cudart, cuBLAS and NCCL — plus the shared libraries the binary links
# (OpenBLAS, nifticlib, libpng, zlib, libgomp, gRPC core, protobuf-c,
# OpenSSL); the build fails when any library the binary needs is missing.
# Runs as the unprivileged user "fedseg" (uid 10001).
# CUDA_VERSION and CUDA_ARCH are build arguments (--build-arg CUDA_ARCH=80;90).

ARG CUDA_VERSION=13.0.0

# ---- builder ------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS builder
ARG CUDA_ARCH=90
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu's archive versions move with security updates; pinning them would break
# the build at the next update, so versions are left to the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config \
      libopenblas-dev libnifti2-dev libpng-dev zlib1g-dev \
      libgrpc-dev libprotobuf-c-dev protobuf-c-compiler libssl-dev libsodium-dev libisal-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The node image must carry the CUDA backend: stop when CMake found no nvcc.
RUN cmake -S /src -B /build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF -DFS_WITH_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH}" \
 && grep -q '^CMAKE_CUDA_COMPILER:.*nvcc' /build/CMakeCache.txt \
 && cmake --build /build -j"$(nproc)" --target fedseg bench_step \
 && install -m 0755 /build/fedseg /build/bench/bench_step /usr/local/bin/

# ---- runtime ------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libopenblas0 libnifti2-2 libpng16-16t64 zlib1g libgomp1 \
      libgrpc29t64 libprotobuf-c1 libssl3t64 libsodium23 libisal2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /usr/local/bin/fedseg /usr/local/bin/bench_step /usr/local/bin/
# Every shared library the programs need must resolve in this image (libcuda
# comes from the host's driver at run time and is loaded by cudart, not linked).
RUN for b in /usr/local/bin/fedseg /usr/local/bin/bench_step; do \
      if ldd "$b" | grep 'not found'; then echo "missing libraries for $b" >&2; exit 1; fi; \
    done \
 && groupadd --system --gid 10001 fedseg \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/fedseg \
      --shell /usr/sbin/nologin fedseg
USER 10001:10001
WORKDIR /home/fedseg
ENTRYPOINT ["fedseg"]
CMD ["--help"]

# docker/aggregator.Dockerfile — the fedseg aggregator image (CPU only), built
# from the repository root:
#
#   docker build -f docker/aggregator.Dockerfile -t fedseg-aggregator .
#   docker run --rm fedseg-aggregator --help
#
# Stage 1 (builder): Debian 12 slim with the -dev packages; builds fedseg with
# -DFS_WITH_CUDA=OFF (the CPU backend only; no CUDA toolkit in the image).
# Stage 2 (runtime): Debian 12 slim with only the shared libraries the binary
# links (OpenBLAS, nifticlib, libpng, zlib, libgomp, gRPC core, protobuf-c,
# OpenSSL); the build fails when any of them is missing. Runs as the
# unprivileged user "fedseg" (uid 10001).

# ---- builder ------------------------------------------------------------------
FROM debian:12-slim AS builder
ENV DEBIAN_FRONTEND=noninteractive
# Debian's versions move with security updates; pinning them would break the
# build at the next point release, so versions are left to the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config \
      libopenblas-dev libnifti2-dev libpng-dev zlib1g-dev \
      libgrpc-dev libprotobuf-c-dev protobuf-c-compiler libssl-dev libsodium-dev libisal-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S /src -B /build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF -DFS_WITH_CUDA=OFF \
 && cmake --build /build -j"$(nproc)" --target fedseg \
 && install -m 0755 /build/fedseg /usr/local/bin/

# ---- runtime ------------------------------------------------------------------
FROM debian:12-slim
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libopenblas0 libnifti2-2 libpng16-16 zlib1g libgomp1 \
      libgrpc29 libprotobuf-c1 libssl3 libsodium23 libisal2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /usr/local/bin/fedseg /usr/local/bin/
RUN if ldd /usr/local/bin/fedseg | grep 'not found'; then \
      echo "missing libraries for fedseg" >&2; exit 1; \
    fi \
 && groupadd --system --gid 10001 fedseg \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/fedseg \
      --shell /usr/sbin/nologin fedseg
USER 10001:10001
WORKDIR /home/fedseg
# The default gRPC port of a provisioned federation (fedseg provision); publish
# whichever port the aggregator's startup kit names.
EXPOSE 50051
ENTRYPOINT ["fedseg"]
CMD ["--help"]

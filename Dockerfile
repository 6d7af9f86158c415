# syntax=docker/dockerfile:1
#
# Tandem's image: `tandem-worker` (the entrypoint) and the `tandem` tool.
#
#   docker build -t tandem .
#   docker compose up -d            # docker-compose.yml runs the fleet
#
# Two stages: the Rust toolchain builds the release binaries, and only they
# go into a small CUDA runtime image. Nothing CUDA is needed to build: the
# worker loads the driver, NVML, NVRTC and cuBLAS at run time, so the same
# image runs GPU workers (with the NVIDIA container runtime) and CPU ones.

# ---- build ----
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the registry and incremental artefacts between
# builds; the binaries are copied out because the target mount is not part
# of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tandem-worker --bin tandem \
    && mkdir -p /out \
    && cp target/release/tandem-worker target/release/tandem /out/

# ---- run ----
# The `base` flavour holds only the CUDA runtime, not the toolkit (the
# `runtime` flavour adds every math library, gigabytes we do not use).
# Ubuntu 24.04 rather than 22.04: its glibc (2.39) is newer than the
# builder's (Debian bookworm, 2.36), so the binaries' symbol versions are
# always satisfied. CUDA 12.8 matches cudarc's `cuda-12080` feature.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04 AS runtime
# The kernels are CUDA C compiled at the worker's start by NVRTC, and the
# model kinds call cuBLAS; the base image has neither. These are the same
# libraries as the PyPI wheels nvidia-cuda-nvrtc-cu12 and nvidia-cublas-cu12
# (which scripts/cuda-check uses on bare hosts), taken from the NVIDIA apt
# repository the image already trusts: no Python, pinned to CUDA 12.8, and
# registered with the dynamic loader, where cudarc finds libnvrtc.so.12 and
# libcublas.so.12. The driver (libcuda, libnvidia-ml) comes from the host
# through the NVIDIA container runtime, as NVIDIA_DRIVER_CAPABILITIES
# (compute,utility, set by the base image) asks.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cuda-nvrtc-12-8 libcublas-12-8 \
    && rm -rf /var/lib/apt/lists/*
# The base image asks the NVIDIA container runtime to refuse a host whose
# driver is older than CUDA 12.8 (r570). Tandem needs less: CUDA 12's minor
# version compatibility runs what NVRTC 12.8 compiles to CUBIN for the exact
# GPU, and cuBLAS 12.8, on any r525+ driver (CUDA 12.0). So the check is
# off (the README states r525+).
ENV NVIDIA_DISABLE_REQUIRE=1
COPY --from=builder /out/tandem-worker /out/tandem /usr/local/bin/
# A worker needs no privileges: the GPU device nodes the runtime adds are
# usable by any user. /var/lib/tandem/models exists, owned by that user, so
# a named volume mounted there (the fleet's model_dir) starts writable.
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/tandem tandem \
    && install -d -o tandem -g tandem /var/lib/tandem/models
USER tandem
WORKDIR /var/lib/tandem
ENTRYPOINT ["tandem-worker"]
CMD ["run"]

# syntax=docker/dockerfile:1
# agentguard: a static (musl) release binary in a distroless, non-root image.
# Build: docker build -t ghcr.io/agentguard/agentguard:0.1.0 .

# Bases pinned by digest (Renovate keeps tag and digest current: renovate.json).
# rust:1.95-bookworm, digest as published in public Dockerfiles and a build log (recorded 2026-12-07).
FROM rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS build
# musl-tools gives a static binary (ring builds against musl-gcc). The exact Debian version
# of a build-only tool does not reach the final image.
WORKDIR /src
# One image per platform (linux/amd64, linux/arm64; the release builds each under emulation):
# the musl target of the platform being built. The toolchain file pins the compiler.
ARG TARGETARCH=amd64
COPY rust-toolchain.toml ./
# hadolint ignore=DL3008
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; \
    esac >/target \
    && apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add "$(cat /target)"
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Declared bench targets must exist for cargo to read the manifest.
COPY benches ./benches
RUN cargo build --release --locked --target "$(cat /target)" --bin agentguard \
    && cp "target/$(cat /target)/release/agentguard" /agentguard

# gcr.io/distroless/static-debian12:nonroot, digest as published on 2026-08-26.
FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab
LABEL org.opencontainers.image.title="agentguard" \
      org.opencontainers.image.description="Stops AI agents from deleting protected Kubernetes data without human approval" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /agentguard /agentguard
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/agentguard"]
CMD ["run"]

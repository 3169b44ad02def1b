# syntax=docker/dockerfile:1
# agentguard: a static (musl) release binary in a distroless, non-root image.
# Build: docker build -t ghcr.io/agentguard/agentguard:0.1.0 .

FROM rust:1.95-bookworm AS build
# musl-tools gives a static binary (ring builds against musl-gcc). The exact Debian version
# of a build-only tool does not reach the final image.
WORKDIR /src
# The toolchain file pins the compiler; the musl target is added to that toolchain.
COPY rust-toolchain.toml ./
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Declared bench targets must exist for cargo to read the manifest.
COPY benches ./benches
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin agentguard

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="agentguard" \
      org.opencontainers.image.description="Stops AI agents from deleting protected Kubernetes data without human approval" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/agentguard /agentguard
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["/agentguard"]
CMD ["run"]

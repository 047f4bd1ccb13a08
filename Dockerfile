# One small image carrying the three FlashSale binaries. The operator creates
# gateway and worker pods from this same image unless a FlashSale overrides it.
#   docker build -t ghcr.io/flashsale/flashsale:0.1.0 .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY common common
COPY gateway gateway
COPY worker worker
COPY operator operator
COPY bench bench
COPY e2e e2e
COPY crds crds
COPY examples examples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p flashsale-gateway -p flashsale-worker -p flashsale-operator \
 && mkdir -p /out \
 && cp target/release/flashsale-gateway target/release/flashsale-worker target/release/flashsale-operator /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 flashsale \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin flashsale
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 8080 9090 9091
ENTRYPOINT ["/usr/local/bin/flashsale-operator"]
CMD ["run"]

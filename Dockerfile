# syntax=docker/dockerfile:1
# Both services from one build; pick the image with --target:
#   docker build --target users -t heft-users .
#   docker build --target entries -t heft-entries .

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and build artefacts across builds; the
# binaries are copied out because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p heft-users -p heft-entries \
 && install -D -m 0755 -t /out target/dist/heft-users target/dist/heft-entries

FROM debian:bookworm-slim AS runtime
# ca-certificates: the system trust store, the one thing a slim image lacks
# for outgoing TLS (calls between the services trust HEFT_TLS_CA).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 heft \
 && useradd --system --uid 10001 --gid heft --no-create-home --home-dir /var/lib/heft heft \
 && install -d -o heft -g heft /var/lib/heft
COPY --from=builder /out/ /usr/local/bin/
# The SQLite default (sqlite://data/*.db) lands under the working directory.
WORKDIR /var/lib/heft
# Numeric, so orchestrators can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001

FROM runtime AS users
ENV HEFT_USERS_LISTEN=0.0.0.0:50051 HEFT_USERS_METRICS_LISTEN=0.0.0.0:9051
EXPOSE 50051 9051
# Generous start period: migrations run before the service reports SERVING.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["heft-users", "healthcheck"]
ENTRYPOINT ["heft-users"]

FROM runtime AS entries
ENV HEFT_ENTRIES_LISTEN=0.0.0.0:50052 HEFT_ENTRIES_METRICS_LISTEN=0.0.0.0:9052
EXPOSE 50052 9052
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["heft-entries", "healthcheck"]
ENTRYPOINT ["heft-entries"]

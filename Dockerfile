# One image per service: docker build --build-arg SERVICE=process-api .
# SERVICE is experience-api, process-api, system-api, or retail-platform (all
# three in one process, the embedded default).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ARG SERVICE=process-api
COPY --from=planner /app/recipe.json recipe.json
# Build settings of dependencies (SQLite's compile options) before cooking.
COPY .cargo .cargo
# Dependencies only: cached until Cargo.toml/Cargo.lock change.
RUN cargo chef cook --release --recipe-path recipe.json --package ${SERVICE}
COPY . .
RUN cargo build --release --package ${SERVICE} --bin ${SERVICE} \
    && cp target/release/${SERVICE} /app/service

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin retail \
    && mkdir -p /srv/data /srv/config && chown retail /srv/data
WORKDIR /srv
COPY --from=builder /app/service /usr/local/bin/service
COPY config/production.example.toml /srv/config/example.toml
# Production profile, listening on every interface: the image ships no
# secret and no key, so it refuses to start until the deployment gives it
# RETAIL_AUTH__HS256_SECRET (or an identity provider's JWKS: mount a config
# like /srv/config/example.toml and pass `--config`) and mounts the service
# keys made by `retail-platform keys --dir DIR` at /srv/keys.
ENV RETAIL_PROFILE=production \
    RETAIL_AUTH__SERVICE_KEYS__DIR=/srv/keys \
    RETAIL_AUTH__SERVICE_KEYS__CREATE_MISSING=false \
    RETAIL_SEED__ENABLED=false \
    RETAIL_EXPERIENCE__HOST=0.0.0.0 \
    RETAIL_PROCESS__HOST=0.0.0.0 \
    RETAIL_SYSTEM__HOST=0.0.0.0 \
    RETAIL_PROCESS__DATABASE_URL=sqlite:///srv/data/process.db \
    RETAIL_SYSTEM__DATABASE_URL=sqlite:///srv/data/system.db
USER retail
EXPOSE 8080 8081 8082
ENTRYPOINT ["/usr/local/bin/service"]

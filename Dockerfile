# Multi-stage build: compile with the committed offline query data (.sqlx/), so no
# database is needed at build time; run as a non-root user on a slim base.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
ENV SQLX_OFFLINE=true
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
COPY .sqlx .sqlx
COPY migrations migrations
COPY config config
COPY src src
# sqlx's Postgres driver with tally's PgBouncer patch (vendor/sqlx-postgres/TALLY.md).
COPY vendor vendor
# Declared bench targets must exist for Cargo to read the manifest.
COPY bench bench
RUN cargo build --release --locked --bin tally

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app tally
WORKDIR /app
COPY --from=build /src/target/release/tally /usr/local/bin/tally
COPY config config
ENV TALLY_ENV=production
USER 10001
EXPOSE 8080
ENTRYPOINT ["tally"]
CMD ["serve"]

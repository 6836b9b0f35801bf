# mpmirror in a container: `docker run IMAGE` runs the daemon; `docker run IMAGE sync`
# runs one sync and exits (for cron, systemd timers, Kubernetes CronJobs).
# The builder's glibc (bookworm) matches the runtime's.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
# TLS roots are compiled in (webpki-roots), so the runtime needs no ca-certificates.
COPY --from=build /src/target/release/mpmirror /usr/local/bin/mpmirror
COPY config.example.toml /usr/local/share/doc/mpmirror/config.example.toml
# /data holds catalog.db and blobs/; /config holds mpmirror.toml (and the secret file).
RUN mkdir -p /data /config && chown 10001:10001 /data
ENV MPMIRROR_CONFIG=/config/mpmirror.toml
VOLUME ["/data"]
USER 10001:10001
WORKDIR /data
HEALTHCHECK --interval=5m --timeout=30s --start-period=10m --retries=1 \
    CMD ["mpmirror", "health"]
ENTRYPOINT ["mpmirror"]
CMD ["daemon"]

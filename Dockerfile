# kairos-rs container image.
#
#   docker build -t kairos-rs .
#   docker run --rm -p 8080:8080 -v "$PWD/my-config.json:/etc/kairos/config.json:ro" kairos-rs
#
# The default config (config/docker.json) listens on 0.0.0.0:8080 and proxies /api/* to the
# placeholder upstream http://upstream:8000; mount your own file over /etc/kairos/config.json.

# ---- build ----------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first. With only the manifests and stub sources, this layer is rebuilt only when
# Cargo.toml, Cargo.lock or vendor/ change. Cargo refuses a manifest whose declared target has
# no file, so every [[bench]] Cargo.toml declares gets a stub, its name read from the manifest
# (tests/docker_build.rs checks).
COPY Cargo.toml Cargo.lock ./
COPY vendor ./vendor
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && awk '/^\[\[bench\]\]/ { b = 1; next } b && $1 == "name" { gsub(/"/, "", $3); print "fn main() {}" > ("benches/" $3 ".rs"); b = 0 }' Cargo.toml \
 && cargo build --release --locked --bin kairos-rs \
 && rm -rf src benches

# The gateway itself. config/ is needed at build time: config/demo.json is compiled in; so is
# the web UI's build output, ui/dist/ (embedded by src/admin/ui.rs; build.rs watches it).
COPY build.rs ./
COPY src ./src
COPY benches ./benches
COPY config ./config
COPY ui/dist ./ui/dist
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin kairos-rs

# ---- runtime --------------------------------------------------------------------------------
FROM debian:bookworm-slim

# curl is only for the HEALTHCHECK. Upstream TLS uses the roots compiled into the binary, so
# ca-certificates is not needed.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin kairos

COPY --from=builder /src/target/release/kairos-rs /usr/local/bin/kairos-rs
COPY config/docker.json /etc/kairos/config.json

USER 10001:10001
EXPOSE 8080

# Matches server.port in config/docker.json; change both together.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["curl", "--fail", "--silent", "--show-error", "--output", "/dev/null", "http://127.0.0.1:8080/_kairos/health"]

# The gateway stops gracefully on SIGTERM (docker stop), bounded by server.shutdown_timeout.
ENTRYPOINT ["/usr/local/bin/kairos-rs"]
CMD ["--config", "/etc/kairos/config.json"]

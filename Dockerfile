# syntax=docker/dockerfile:1
#
# tokenwatch image: `docker build -t tokenwatch .`, or `docker compose up --build` for the whole demo
# stack. The same image runs the service (`run`, the default), the traffic generator (`gen`) and
# `validate`.

# ---- build ------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder

# rdkafka builds librdkafka from source: a C/C++ toolchain, make and perl for its configure step,
# zlib for compressed batches. OpenSSL (Kafka TLS and SASL/SCRAM) and zstd are built from source
# and linked statically (the `ssl-vendored` and `zstd` features): no libssl in the runtime image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ make perl zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# Cache mounts keep the registry and the target directory between builds, so a change in src/ does
# not rebuild librdkafka and every dependency. The binary is copied out because the cache mount is
# not part of the layer. --locked: build exactly the dependency versions that were tested.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tokenwatch \
 && install -m 0755 target/release/tokenwatch /usr/local/bin/tokenwatch

# ---- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim

# librdkafka is linked into the binary, but against the system zlib (libz.so.1), which slim images
# have today only by accident of dpkg's dependencies: named here so it stays. ca-certificates: the
# system trust store that TLS to Redis (rediss://) verifies servers against.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged uid: tokenwatch needs no privileges, and a numeric USER lets Kubernetes'
# runAsNonRoot verify it.
RUN groupadd --system --gid 10001 tokenwatch \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tokenwatch

COPY --from=builder /usr/local/bin/tokenwatch /usr/local/bin/tokenwatch
# The repository's rules as the default rule set; mount a directory over it to use your own.
COPY rules/ /etc/tokenwatch/rules/
# MaxMind's test database: it only knows MaxMind's test networks, enough for the demo and the
# generated traffic (docker-compose.yml points TOKENWATCH_GEOIP at it). In production mount a real
# GeoLite2-City.mmdb and set `geoip` to it.
COPY assets/GeoLite2-City-Test.mmdb /usr/share/tokenwatch/GeoLite2-City-Test.mmdb
# The example configuration as the default, so `docker run tokenwatch` starts with the CMD below.
COPY tokenwatch.example.toml /etc/tokenwatch/tokenwatch.toml

# In a container the metrics listener must not be bound to loopback (the binary's and the example
# config's 127.0.0.1), or nothing outside could scrape it. This is the only setting the image
# imposes: the environment wins over the config file, so every other default here would silently
# override a mounted config (a real GeoIP database, a rule directory).
ENV TOKENWATCH_METRICS_ADDR=0.0.0.0:9464

# Relative paths (the default `rules`, `tokenwatch validate`'s `--rules rules`) resolve to the
# image's files.
WORKDIR /etc/tokenwatch
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["tokenwatch"]
CMD ["run", "--config", "/etc/tokenwatch/tokenwatch.toml"]

# syntax=docker/dockerfile:1
# Build stage: compile the relay into one executable with Deno 2.9.6 (pinned). The binary embeds the sandboxed
# permissions of `deno task compile`: network with the special ranges denied, AERO_PROXY_* variables, and reads of
# /run/secrets, /etc/aero-net-proxy and /dev/null (opened at startup to count the descriptors left) only, plus
# --unstable-net and --allow-run=/usr/local/bin/aero-net-proxy for AERO_PROXY_WORKERS > 1 (the supervisor starts
# this same binary as its workers; every relay process gives the permission up before it listens).
# SANDBOX_EXCEPT (IPv4 addresses or CIDRs, comma-separated) leaves private addresses the relay itself must reach
# open in the sandbox, such as a Redis for shared limits on a private network:
#   docker build --build-arg SANDBOX_EXCEPT=10.96.12.34 .
# Empty (the default), the binary gets exactly `deno task compile`'s permissions.
FROM denoland/deno:2.9.6 AS build
ARG SANDBOX_EXCEPT=""
WORKDIR /app
COPY deno.json deno.lock main.ts ./
COPY src ./src
COPY tools/compile.ts ./tools/
RUN deno run --allow-read --allow-run tools/compile.ts --sandbox-except="${SANDBOX_EXCEPT}"

# Runtime stage: the binary alone, as a non-root user.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin relay \
    && mkdir -p /etc/aero-net-proxy
COPY --from=build /app/dist/aero-net-proxy /usr/local/bin/aero-net-proxy
ENV AERO_PROXY_HOST=0.0.0.0 \
    AERO_PROXY_PORT=8080
EXPOSE 8080
USER relay
# The binary probes its own /healthz (no curl in the image).
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/aero-net-proxy", "--healthcheck"]
ENTRYPOINT ["/usr/local/bin/aero-net-proxy"]

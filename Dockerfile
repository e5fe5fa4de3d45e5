# syntax=docker/dockerfile:1
# Build stage: compile the relay into one executable with Deno 2.9.6 (pinned).
FROM denoland/deno:2.9.6 AS build
WORKDIR /app
COPY deno.json deno.lock main.ts ./
COPY src ./src
RUN deno task compile

# Runtime stage: the binary alone, run as a non-root user.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin relay
COPY --from=build /app/dist/aero-net-proxy /usr/local/bin/aero-net-proxy
ENV AERO_PROXY_HOST=0.0.0.0 \
    AERO_PROXY_PORT=8080
EXPOSE 8080
USER relay
ENTRYPOINT ["/usr/local/bin/aero-net-proxy"]

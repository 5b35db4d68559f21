# terminal-proxy container image.
#   docker build -t terminal-proxy .
#   docker run -p 8181:8181 -v ./config.yaml:/etc/terminal-proxy/config.yaml:ro terminal-proxy
# The config must listen on 0.0.0.0:8181 (see deploy/kubernetes/configmap.yaml).
# Linted by tests/test_deploy.py with hadolint.

# --- 1. the web page (xterm.js bundle), built with node -------------------------------------
FROM node:20-bookworm-slim AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/build.mjs ./
COPY web/src ./src
RUN mkdir -p /src/terminal_proxy/web && node build.mjs

# --- 2. the Python package and its dependencies, in a virtual environment -------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# setup.py finds the page already built (and no web/ sources) and packages it as it is.
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY terminal_proxy ./terminal_proxy
COPY --from=web /src/terminal_proxy/web/static ./terminal_proxy/web/static
RUN python -m venv /opt/terminal-proxy \
    && /opt/terminal-proxy/bin/pip install --no-cache-dir . \
    && /opt/terminal-proxy/bin/python -m compileall -q /opt/terminal-proxy

# --- 3. the final image: Python, the venv, nothing else -------------------------------------
FROM python:3.11-slim
LABEL org.opencontainers.image.title="terminal-proxy" \
      org.opencontainers.image.description="Web-terminal gateway: browser WebSocket to Kubernetes exec" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/terminal-proxy /opt/terminal-proxy
ENV PATH=/opt/terminal-proxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TERMINAL_PROXY_HEALTH_URL=http://127.0.0.1:8181/-/health
# A fixed numeric, unprivileged user (Kubernetes runAsNonRoot can check a number).
USER 10001:10001
EXPOSE 8181 9181
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['TERMINAL_PROXY_HEALTH_URL'], timeout=2)"]
# SIGTERM drains (session.shutdown_grace), then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["terminal-proxy"]
CMD ["serve", "--config", "/etc/terminal-proxy/config.yaml"]

# The proxy as a small service container: configuration by environment alone.
#   docker build -t gitlab-pypi-proxy .
#   docker run -p 8080:8080 -v pypi-cache:/cache \
#     -e GITLAB_PYPI_PROXY_UPSTREAM_URL=https://gitlab.example.com \
#     -e GITLAB_PYPI_PROXY_UPSTREAM_TOKEN=gldt-... gitlab-pypi-proxy
# As a GitLab CI service it takes the server from $CI_SERVER_URL (README: "As a GitLab CI service").

FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
# pip compiles every module here, so the non-root runtime starts without writing bytecode.
# pip stays in the venv: `gitlab-pypi-proxy warm -r` resolves requirements with it.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install .

FROM python:3.12-slim
RUN groupadd --system --gid 10001 proxy \
    && useradd --system --uid 10001 --gid proxy --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin proxy \
    && mkdir /cache \
    && chown proxy:proxy /cache
COPY --from=build /opt/venv /opt/venv
# The image, not the program, opens the port to the network: the program's default is loopback.
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GITLAB_PYPI_PROXY_SERVER_HOST=0.0.0.0 \
    GITLAB_PYPI_PROXY_SERVER_PORT=8080 \
    GITLAB_PYPI_PROXY_CACHE_DIR=/cache
USER 10001:10001
VOLUME ["/cache"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('GITLAB_PYPI_PROXY_SERVER_PORT', '8080') + '/-/health', timeout=2)"]
ENTRYPOINT ["gitlab-pypi-proxy"]
CMD ["serve"]

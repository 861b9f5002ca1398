# registry-proxy: a pull-through cache for Docker Hub (and other registries).
#   docker build -t registry-proxy .
#   docker run -d -p 5000:5000 -v registry-proxy-cache:/var/lib/registry-proxy registry-proxy
# To use your own config, mount it: -v $PWD/config.toml:/etc/registry-proxy/config.toml:ro
# Python 3.11, as the tests run; every package at the version in requirements/*.lock, hash-checked.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/build.lock ./requirements/
RUN pip install --require-hashes -r requirements/build.lock
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY storage ./storage
RUN pip wheel --no-deps --no-build-isolation -w /wheels .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/runtime.lock /tmp/runtime.lock
RUN pip install --require-hashes -r /tmp/runtime.lock && rm /tmp/runtime.lock
COPY --from=build /wheels /wheels
RUN pip install --no-deps /wheels/*.whl && rm -rf /wheels

RUN useradd --system --uid 10001 --home-dir /var/lib/registry-proxy registry-proxy \
    && mkdir -p /var/lib/registry-proxy /etc/registry-proxy \
    && chown registry-proxy /var/lib/registry-proxy
COPY config.example.toml /etc/registry-proxy/config.toml
RUN sed -i 's|^root = .*|root = "/var/lib/registry-proxy"|' /etc/registry-proxy/config.toml

USER registry-proxy
WORKDIR /var/lib/registry-proxy
VOLUME ["/var/lib/registry-proxy"]
EXPOSE 5000
ENV REGISTRY_PROXY_CONFIG=/etc/registry-proxy/config.toml

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/v2/', timeout=4)"

ENTRYPOINT ["registry-proxy", "serve"]

# coschedd in a container: one daemon per container (per node, with the
# DaemonSet in deploy/kubernetes/). See deploy/README.md.
#
#   docker build -t cosched .
#   docker run -d --name cosched \
#     -v /srv/cosched/coschedd.toml:/etc/cosched/coschedd.toml:ro \
#     -v /srv/cosched/jobs:/etc/cosched/jobs:ro cosched
#   docker exec cosched coschedctl status
#
# The mounted config and jobs must be owned by root (or uid 10001) and
# writable by no one else, folders above them included (StrictModes).

# -- build: the wheel, with the C switch path compiled --------------------------
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY cosched ./cosched
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- run --------------------------------------------------------------------------
FROM python:3.11-slim
# tini is PID 1: it reaps processes that jobs start and orphan, and passes
# SIGTERM on to coschedd, which then stops its tasks within stop_timeout.
RUN apt-get update && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
RUN groupadd --system --gid 10001 cosched \
    && useradd --system --uid 10001 --gid cosched --home-dir /var/lib/cosched \
       --shell /usr/sbin/nologin cosched \
    && install -d -m 0755 /etc/cosched /etc/cosched/jobs \
    && install -d -o cosched -g cosched -m 0750 /run/cosched /var/lib/cosched
# The default configuration; mount your own over it (or set COSCHED_* variables).
COPY config/coschedd.toml /etc/cosched/coschedd.toml
# Configuration from the environment: COSCHED_<SECTION>_<KEY> (see
# config/coschedd.toml). JSON log lines on stdout, for the container engine.
ENV COSCHED_CONFIG=/etc/cosched/coschedd.toml \
    COSCHED_DAEMON_JOBS_DIR=/etc/cosched/jobs \
    COSCHED_DAEMON_RUNTIME_DIR=/run/cosched \
    COSCHED_DAEMON_WATCHDOG=false \
    COSCHED_LOG_FORMAT=json \
    COSCHED_LOG_STREAM=stdout \
    COSCHED_METRICS_LISTEN=0.0.0.0:9469
USER 10001:10001
VOLUME ["/run/cosched"]
EXPOSE 9469
STOPSIGNAL SIGTERM
# ping is answered even while a job stalls the event loop; the HTTP /livez
# check (used by the DaemonSet) is not.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["coschedctl", "--timeout", "4", "ping"]
ENTRYPOINT ["tini", "--", "coschedd"]

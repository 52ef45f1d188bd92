# The replica's image: `docker build -t model-replica:0.1.0 .` (or `buildah bud`), run by
# deploy/kubernetes/replica.yaml. The spec and predictor are mounted at /etc/replica; the disk tree lives in
# the /var/lib/replica volume, so downloaded models survive a container restart.
ARG PYTHON=3.11

# Build stage: the project and its dependencies in a virtualenv, copied whole into the final stage.
FROM python:${PYTHON}-slim-bookworm AS build
ENV VENV=/opt/replica PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY replica ./replica
COPY supervisor ./supervisor
COPY workers ./workers
RUN python -m venv "$VENV"
RUN "$VENV/bin/pip" install --no-cache-dir .
RUN "$VENV/bin/replica" --help > /dev/null

# Final stage: the virtualenv and a user of its own; no compilers, no pip cache, no sources.
FROM python:${PYTHON}-slim-bookworm
ENV VENV=/opt/replica
COPY --from=build /opt/replica /opt/replica
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /var/lib/replica replica \
    && install -d -o replica -g replica -m 0750 /var/lib/replica
ENV PATH=/opt/replica/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    REPLICA_HOST=0.0.0.0 \
    REPLICA_PORT=8888 \
    REPLICA_STATE_DIR=/var/lib/replica
USER 10001:10001
WORKDIR /var/lib/replica
VOLUME ["/var/lib/replica"]
EXPOSE 8888
# The supervisor drains on SIGTERM (requests in flight finish within REPLICA_DRAIN_TIMEOUT).
STOPSIGNAL SIGTERM
ENTRYPOINT ["replica", "serve"]
CMD ["/etc/replica/api.yaml"]

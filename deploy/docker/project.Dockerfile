# An image that carries a project: the replica's image (the repository's Dockerfile) with a project folder
# (api.yaml, the predictor, and its requirements.txt / dependencies.sh) baked in and its dependencies set up
# at build time, as root, so a container starts serving without installing anything:
#
#   docker build -t model-replica:0.1.0 .
#   docker build -f deploy/docker/project.Dockerfile --build-arg PROJECT=path/to/project -t my-api:1 .
#   docker run -p 8888:8888 -v my-api-state:/var/lib/replica my-api:1
#
# PROJECT is relative to the build context (the folder given to `docker build`). The project's packages go
# into /opt/project-packages, outside the state volume, and the replica's own packages stay as they are.
ARG BASE=model-replica:0.1.0
FROM ${BASE}
ARG PROJECT=.
ARG SPEC=api.yaml
USER root
ENV REPLICA_PACKAGES_DIR=/opt/project-packages \
    REPLICA_SPEC=/etc/replica/${SPEC}
COPY ${PROJECT} /etc/replica
RUN replica prepare "$REPLICA_SPEC" --state-dir /tmp/replica-prepare && rm -rf /tmp/replica-prepare \
    && install -d -m 0755 "$REPLICA_PACKAGES_DIR" && chmod -R a+rX "$REPLICA_PACKAGES_DIR" /etc/replica
USER 10001:10001
# The spec's path comes from the build argument; flags given to `docker run` follow it.
ENTRYPOINT ["/bin/sh", "-c", "exec replica serve \"$REPLICA_SPEC\" \"$@\"", "replica"]
CMD []

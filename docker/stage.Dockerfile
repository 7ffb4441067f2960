# The stage image: the project installed from requirements.lock; entrypoint = the stage CLI.
# It also runs the Prefect server, the Prefect worker and deployed flow runs (docker-compose.yml).
#
#   CPU:  docker build -f docker/stage.Dockerfile -t ssl-pipeline/stage:cpu .
#   GPU:  docker build -f docker/stage.Dockerfile --build-arg VARIANT=gpu -t ssl-pipeline/stage:gpu .
#   no registry or no index inside builds (see README, "Containers"):
#         docker/local-base.sh && docker/wheelhouse.sh && docker build --network host \
#           --build-arg BASE_IMAGE=ssl-pipeline/base:bookworm --build-arg PIP_SOURCE=wheelhouse ...
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS python
# a bare Debian base brings no Python (python:3.11-slim does); the venv below needs the same
# interpreter path in both stages of this build
RUN if ! command -v python3 > /dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

FROM python AS install
# index: install from PyPI; wheelhouse: only from docker/wheelhouse/ (filled by docker/wheelhouse.sh)
ARG PIP_SOURCE=index
# cpu: TensorFlow-CPU backend; gpu: adds JAX with CUDA 12 from docker/requirements-gpu.lock
ARG VARIANT=cpu
COPY docker/wheelhouse /tmp/wheelhouse
COPY docker/install.sh /usr/local/bin/install-into-venv
COPY requirements.lock docker/requirements-gpu.lock /tmp/locks/
RUN install-into-venv -r /tmp/locks/requirements.lock \
    && if [ "$VARIANT" = gpu ]; then install-into-venv -r /tmp/locks/requirements-gpu.lock; fi
COPY pyproject.toml README.md /app/
COPY stages /app/stages
COPY pipelines /app/pipelines
RUN install-into-venv --no-deps /app

FROM python
ARG KERAS_BACKEND=tensorflow
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    KERAS_BACKEND=${KERAS_BACKEND} \
    KERAS_HOME=/tmp/keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    PREFECT_HOME=/tmp/prefect \
    PREFECT_LOGGING_EXTRA_LOGGERS=stages,pipelines \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    SSL_PIPELINE_HOME=/data
COPY --from=install /opt/venv /opt/venv
# the source stays in /app too: deployments name their flow by file (pipelines/flow.py:...)
COPY --from=install /app /app
COPY docker/entrypoint.sh /usr/local/bin/ssl-pipeline-entrypoint
RUN python -c "from stages.stage import STAGE_NAMES; print(*STAGE_NAMES, sep='\n')" > /etc/ssl-pipeline-stages \
    && useradd --uid 1000 --create-home ssl \
    && mkdir -p /data && chown ssl:ssl /data
USER ssl
WORKDIR /app
ENTRYPOINT ["ssl-pipeline-entrypoint"]
CMD ["--help"]

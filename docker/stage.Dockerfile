# The stage image: the project installed from requirements.lock; entrypoint = the stage CLI.
# It also runs the Prefect server, the Prefect worker and deployed flow runs (docker-compose.yml).
#
#   CPU:  docker build -f docker/stage.Dockerfile -t ssl-pipeline/stage:cpu .
#   GPU:  docker build -f docker/stage.Dockerfile --build-arg VARIANT=gpu --build-arg KERAS_BACKEND=jax \
#           -t ssl-pipeline/stage:gpu .
#   no registry, or no index reachable inside builds (README, "Containers"):
#         docker/local-base.sh && docker/wheelhouse.sh && docker build --network host \
#           --build-arg BASE_IMAGE=ssl-pipeline/base:bookworm --build-arg PIP_SOURCE=wheelhouse ...
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS python
# a bare Debian base brings no Python (python:3.11-slim does); the venv made below needs the
# same interpreter path in every stage of this build
RUN if ! command -v python3 > /dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# The dependencies, then the project as a wheel: a source change rebuilds only the wheel, and
# the final stage reuses the cached copy of the venv (~3 GB, the slow part of a cold build).
FROM python AS install
ARG PIP_SOURCE=index
# cpu: TensorFlow-CPU backend; gpu: adds JAX with CUDA 12 (docker/requirements-gpu.lock)
ARG VARIANT=cpu
COPY docker/wheelhouse /tmp/wheelhouse
COPY docker/pip-source.sh /usr/local/bin/pip-source
COPY requirements.lock docker/requirements-gpu.lock /tmp/locks/
RUN python3 -m venv /opt/venv \
    && pip-source /opt/venv/bin/pip install --quiet --no-cache-dir uv==0.13.8 \
    && install="pip-source /opt/venv/bin/uv pip install --quiet --no-cache --compile-bytecode --python /opt/venv/bin/python" \
    && $install -r /tmp/locks/requirements.lock \
    && if [ "$VARIANT" = gpu ]; then $install -r /tmp/locks/requirements-gpu.lock; fi
COPY pyproject.toml README.md /app/
COPY stages /app/stages
COPY pipelines /app/pipelines
RUN pip-source /opt/venv/bin/uv build --quiet --wheel --out-dir /tmp/dist /app

FROM python
# first: a change below must not invalidate the cached copy of the ~3 GB venv
COPY --from=install /opt/venv /opt/venv
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
    PREFECT_UI_STATIC_DIRECTORY=/tmp/prefect-ui \
    GIT_PYTHON_REFRESH=quiet \
    SSL_PIPELINE_HOME=/data
COPY --from=install /tmp/dist /tmp/dist
COPY docker/entrypoint.sh /usr/local/bin/ssl-pipeline-entrypoint
RUN uv pip install --quiet --no-cache --no-deps --compile-bytecode --python /opt/venv/bin/python /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && python -c "from stages.lib.stage import STAGE_NAMES; print(*STAGE_NAMES, sep='\n')" > /etc/ssl-pipeline-stages \
    && useradd --uid 1000 --create-home ssl \
    && mkdir -p /data && chown ssl:ssl /data
USER ssl
WORKDIR /home/ssl
ENTRYPOINT ["ssl-pipeline-entrypoint"]
CMD ["--help"]

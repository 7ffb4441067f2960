#!/bin/sh
# uv pip install ARGS into /opt/venv (made on first use), bytecode compiled. Used by the image builds.
# PIP_SOURCE=index: from PyPI; PIP_SOURCE=wheelhouse: only from /tmp/wheelhouse (docker/wheelhouse.sh)
set -eu
case "${PIP_SOURCE:-index}" in
    index) source="" ;;
    wheelhouse) source="--no-index --find-links /tmp/wheelhouse" ;;
    *) echo "PIP_SOURCE must be index or wheelhouse, not $PIP_SOURCE" >&2; exit 1 ;;
esac
if [ ! -x /opt/venv/bin/uv ]; then
    python3 -m venv /opt/venv
    /opt/venv/bin/pip install --quiet --no-cache-dir $source uv==0.13.8
fi
exec /opt/venv/bin/uv pip install --quiet --no-cache --compile-bytecode --python /opt/venv/bin/python $source "$@"

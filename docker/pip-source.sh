#!/bin/sh
# Run a uv or pip command with the package source the image build chose:
#   PIP_SOURCE=index       PyPI (the default)
#   PIP_SOURCE=wheelhouse  only /tmp/wheelhouse, the copy of docker/wheelhouse/ (docker/wheelhouse.sh)
set -eu
case "${PIP_SOURCE:-index}" in
    index) ;;
    wheelhouse)
        # uv has no environment variable for --no-index: a config file says it
        printf 'no-index = true\nfind-links = ["/tmp/wheelhouse"]\n' > /tmp/uv-wheelhouse.toml
        export UV_CONFIG_FILE=/tmp/uv-wheelhouse.toml PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheelhouse ;;
    *) echo "PIP_SOURCE must be index or wheelhouse, not $PIP_SOURCE" >&2; exit 1 ;;
esac
exec "$@"

#!/usr/bin/env bash
# Fill docker/wheelhouse/ with every wheel the images install, for builds that cannot reach an
# index from inside a container (`--build-arg PIP_SOURCE=wheelhouse`). Downloads go to a cache
# outside the clone and are hard-linked in, so later clones on the same machine download nothing.
#   docker/wheelhouse.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${SSL_PIPELINE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ssl-pipeline/wheelhouse}"
mkdir -p "$cache" docker/wheelhouse
# the downloads depend on the lock files only: a stamp of their hash skips a minute of index queries
stamp="$cache/.done-$(cat requirements.lock mlflow/requirements.lock | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    # the images run Debian bookworm's CPython 3.11 on x86_64 with glibc 2.36: every manylinux tag up to it
    platforms=(--platform manylinux2014_x86_64)
    for minor in $(seq 5 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --implementation cp --python-version 3.11 "${platforms[@]}" \
        --dest "$cache" -r requirements.lock -r mlflow/requirements.lock uv==0.13.8 setuptools==84.2.1 \
        2> >(grep -v "Location .* is ignored" >&2)  # this machine's pip.conf names local indexes that may be absent
    touch "$stamp"
fi
cp -l -u "$cache"/*.whl docker/wheelhouse/ 2> /dev/null || cp -u "$cache"/*.whl docker/wheelhouse/
echo "$(ls docker/wheelhouse/*.whl | wc -l) wheels in docker/wheelhouse ($(du -sh docker/wheelhouse | cut -f1))"

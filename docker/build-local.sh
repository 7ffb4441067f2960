#!/usr/bin/env bash
# Build the stack's images where no registry is reachable: a debootstrapped Debian base, a
# wheelhouse downloaded on the host, then `docker build --network host` on them.
#   docker/build-local.sh [stage] [mlflow] [postgres]      (default: all three)
# SSL_PIPELINE_BUILD_OPTIONS adds `docker build` options, e.g. --no-cache.
# Tags: ssl-pipeline/stage:cpu, ssl-pipeline/mlflow:latest, ssl-pipeline/postgres:15.
set -euo pipefail
cd "$(dirname "$0")/.."
base=ssl-pipeline/base:bookworm
docker/local-base.sh "$base"
docker/wheelhouse.sh
read -ra options <<< "${SSL_PIPELINE_BUILD_OPTIONS:-}"
build=(docker build --quiet --network host "${options[@]}" --build-arg "BASE_IMAGE=$base")
for image in "${@:-stage mlflow postgres}"; do
    for name in $image; do
        started=$SECONDS
        case "$name" in
            stage) "${build[@]}" --build-arg PIP_SOURCE=wheelhouse -f docker/stage.Dockerfile -t ssl-pipeline/stage:cpu . ;;
            mlflow) "${build[@]}" --build-arg PIP_SOURCE=wheelhouse -f mlflow/Dockerfile -t ssl-pipeline/mlflow:latest . ;;
            postgres) "${build[@]}" -f docker/postgres.Dockerfile -t ssl-pipeline/postgres:15 . ;;
            *) echo "unknown image $name: choose stage, mlflow or postgres" >&2; exit 2 ;;
        esac
        echo "built $name in $((SECONDS - started)) s"
    done
done

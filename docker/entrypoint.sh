#!/bin/sh
# A stage name runs that stage's CLI:  docker run IMAGE split --output /data/split --input archive=...
# "--help" lists the stages; any other command runs as given (the Prefect worker starts flow runs
# with `prefect flow-run execute`, docker-compose starts `prefect server start`).
set -e
if grep -qx -- "${1:-}" /etc/ssl-pipeline-stages; then
    stage="$1"
    shift
    exec python -m "stages.$stage" "$@"
fi
if [ "${1:-}" = "--help" ]; then
    echo "usage: docker run IMAGE STAGE [--config FILE] [--input NAME=PATH ...] --output DIR"
    echo "stages: $(tr '\n' ' ' < /etc/ssl-pipeline-stages)"
    echo "or any command, e.g. prefect worker start --pool NAME"
    exit 0
fi
exec "$@"

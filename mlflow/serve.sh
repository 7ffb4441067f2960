#!/bin/sh
# The tracking server behind MLflow's basic-auth app. Users and permissions live in the backend
# database (tables of their own); the first start creates the admin from MLFLOW_AUTH_ADMIN_USERNAME
# and MLFLOW_AUTH_ADMIN_PASSWORD. The app's settings file holds the database password: it is
# written at start, readable by this user only, never into the image ("%" doubled: it is an INI file).
set -eu
umask 077
auth_config=$(mktemp -t basic_auth.XXXXXX)
cat > "$auth_config" <<INI
[mlflow]
default_permission = ${MLFLOW_DEFAULT_PERMISSION:-READ}
database_uri = $(printf '%s' "$MLFLOW_BACKEND_STORE_URI" | sed 's/%/%%/g')
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# a password checked once a minute, not a PBKDF2 hash per request: a changed password takes up to that long
auth_cache_ttl_seconds = 60
INI
export MLFLOW_AUTH_CONFIG_PATH="$auth_config"
# the key that signs the UI's CSRF tokens: stable across restarts, derived from a secret the stack already has
MLFLOW_FLASK_SERVER_SECRET_KEY=${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(printf 'mlflow-csrf:%s' "$MLFLOW_AUTH_ADMIN_PASSWORD" | sha256sum | cut -c1-64)}
export MLFLOW_FLASK_SERVER_SECRET_KEY
exec mlflow server --app-name basic-auth --host 0.0.0.0 --port 5000 \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --serve-artifacts

#!/bin/sh
# Refuses to start the stack while a secret of .env is empty or still .env.example's placeholder,
# naming each one to set. Prints names only, never a value.
status=0
for name in POSTGRES_PASSWORD MLFLOW_TRACKING_PASSWORD PREFECT_API_AUTH_STRING; do
    eval "value=\${$name:-}"
    case "$value" in
        "" | *change-me*)
            echo "error: $name in .env is empty or .env.example's placeholder: set a secret of your own" \
                 "(e.g. $(if [ "$name" = PREFECT_API_AUTH_STRING ]; then echo 'admin:'; fi)\$(openssl rand -hex 16))," \
                 "then docker compose up -d again" >&2
            status=2 ;;
    esac
done
exit $status

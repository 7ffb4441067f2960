# Sourced once by the postgres entrypoint on an empty data volume: POSTGRES_DB holds MLflow's
# tables; Prefect gets a database of its own.
psql -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname="$POSTGRES_DB" -c "CREATE DATABASE prefect"

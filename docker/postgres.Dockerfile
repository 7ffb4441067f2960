# PostgreSQL for hosts that cannot pull the official image (docker-compose.yml uses postgres:16 by
# default; set POSTGRES_IMAGE to this one's tag instead). It keeps the official image's interface
# that the stack uses: POSTGRES_USER/PASSWORD/DB, /docker-entrypoint-initdb.d/*.sh, PGDATA.
#   docker build --network host -f docker/postgres.Dockerfile --build-arg BASE_IMAGE=ssl-pipeline/base:bookworm -t ssl-pipeline/postgres .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
RUN mkdir -p /docker-entrypoint-initdb.d "$PGDATA" /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
USER postgres
ENTRYPOINT ["postgres-entrypoint"]

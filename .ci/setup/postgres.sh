#!/usr/bin/env bash
# PostgreSQL for the slow sweep tests (tests/test_sweep_postgres.py): Debian's postgresql-15
# cluster started as the postgres user, with the role and database the tests use at
# postgresql://lesa:lesa@127.0.0.1:5432/lesa_test (LESA_BENCH_TEST_POSTGRES overrides it).
# Run as root; idempotent.
set -euo pipefail

if ! command -v pg_ctlcluster >/dev/null || [ ! -d /usr/lib/postgresql/15 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q postgresql-15 >/dev/null
fi
if ! pg_lsclusters -h | grep -q '^15 main'; then
    pg_createcluster 15 main >/dev/null
fi
pg_ctlcluster 15 main status >/dev/null 2>&1 || pg_ctlcluster 15 main start
for _ in $(seq 60); do
    runuser -u postgres -- pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 0.5
done

psql_admin() { runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -tA "$@"; }
if [ -z "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'lesa'")" ]; then
    psql_admin -c "CREATE ROLE lesa LOGIN PASSWORD 'lesa'"
fi
if [ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'lesa_test'")" ]; then
    psql_admin -c "CREATE DATABASE lesa_test OWNER lesa"
fi
PGPASSWORD=lesa psql -q -h 127.0.0.1 -U lesa -d lesa_test -tAc "SELECT 1" >/dev/null
echo "postgres: postgresql://lesa:***@127.0.0.1:5432/lesa_test ready"

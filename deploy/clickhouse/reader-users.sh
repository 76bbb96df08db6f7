#!/bin/bash
# Creates the Grafana reader `reader_default` (sees tenant "default") with the password in
# GRAFANA_READER_PASSWORD, the one docker-compose's Grafana logs in with. The role it gets,
# threadline_tenant_reader, and the row policies come from grafana-reader.sql, which compose
# mounts to run before this file (10-reader-policies.sql, then 20-reader-users.sh).
#
# How the clickhouse/clickhouse-server entrypoint runs /docker-entrypoint-initdb.d (its
# docker/server/entrypoint.sh and the image's "How to extend this image"): in name order, *.sql
# piped into `clickhouse-client --multiquery` logged in as CLICKHOUSE_USER, an executable *.sh
# run, any other *.sh sourced into the entrypoint's own bash (set -eo pipefail). Sourced, this
# uses the entrypoint's `clickhouseclient` array; run, it builds the same command. Either way a
# refusal below stops the entrypoint, so the container does not start without a reader.
#
# There is no default password: one that is missing, shorter than 16 characters, made of fewer
# than 8 different characters, a placeholder or an example value shipped in this repository (they
# are public) is refused. Generate one:
#   python -c "import secrets; print(secrets.token_urlsafe(32))"
# The password never reaches a query text (query_log, system.processes) or a process's command
# line (ps): only its SHA-256 in hex is spliced into the statement (sha256_hash, checked to be
# 64 hex digits), and the statement goes to clickhouse-client on stdin. (The variable itself is
# in the container's environment, like compose's other passwords.)

threadline_reader_users() {
    local password="${GRAFANA_READER_PASSWORD-}" folded example hex sql
    local -a client
    # Case-insensitive substrings, since a copied example stays public with a suffix. They cover
    # pipeline/tracking/safety.py's EXAMPLE_SECRETS (the development key by its prefix), which
    # tests/deploy/test_reader_users.py checks.
    local -a examples=(change-me changeme change_me password secret example
                       replace-with-a-long-random-secret INSECURE-development-key)
    local refuse="reader-users.sh: refusing to create the Grafana reader reader_default:"
    local fix='set it to a long random value: python -c "import secrets; print(secrets.token_urlsafe(32))"'

    if [ -z "$password" ]; then
        echo >&2 "$refuse GRAFANA_READER_PASSWORD is empty; $fix"
        exit 1
    fi
    if [ "${#password}" -lt 16 ]; then
        echo >&2 "$refuse GRAFANA_READER_PASSWORD is shorter than 16 characters; $fix"
        exit 1
    fi
    # Fewer than 8 different characters: aaaaaaaaaaaaaaaa, 1234512345123451 (the tracking-key rule).
    if [ "$(printf '%s' "$password" | fold -w1 | sort -u | wc -l)" -lt 8 ]; then
        echo >&2 "$refuse GRAFANA_READER_PASSWORD has fewer than 8 different characters; $fix"
        exit 1
    fi
    folded="${password,,}"
    for example in "${examples[@]}"; do
        if [[ "$folded" == *"${example,,}"* ]]; then
            echo >&2 "$refuse GRAFANA_READER_PASSWORD is or contains an example value from the documentation; $fix"
            exit 1
        fi
    done
    if [[ "$password" == \<*\> ]]; then
        echo >&2 "$refuse GRAFANA_READER_PASSWORD is a placeholder (<...>); $fix"
        exit 1
    fi

    # printf is a builtin: the password goes into the pipe, not onto a command line.
    hex="$(printf '%s' "$password" | sha256sum)"
    hex="${hex%% *}"
    # A glob, not =~, which would leave the hash in the shell's global BASH_REMATCH.
    if [ "${#hex}" -ne 64 ] || [[ "$hex" == *[!0-9a-f]* ]]; then
        echo >&2 "reader-users.sh: sha256sum gave no SHA-256; reader_default not created"
        exit 1
    fi

    if [[ "$(declare -p clickhouseclient 2>/dev/null)" == "declare -a"* ]]; then
        client=("${clickhouseclient[@]}")
    else
        client=(clickhouse-client --multiquery --host 127.0.0.1 -u "${CLICKHOUSE_USER:-default}"
                --password "${CLICKHOUSE_PASSWORD-}")
    fi

    # OR REPLACE: with CLICKHOUSE_ALWAYS_RUN_INITDB_SCRIPTS every start applies the current
    # password (rotation, and a volume that still holds an older reader). Replacing drops the
    # user's grants, so the role is granted again.
    sql="CREATE USER OR REPLACE reader_default IDENTIFIED WITH sha256_hash BY '$hex' SETTINGS readonly = 1;
GRANT threadline_tenant_reader TO reader_default;"
    if ! printf '%s\n' "$sql" | "${client[@]}"; then
        echo >&2 "reader-users.sh: clickhouse-client failed; reader_default not created"
        exit 1
    fi
    echo "reader-users.sh: created the Grafana reader reader_default (tenant default)"
}

# Sourced, xtrace would print the password: keep it off inside, restore it after.
case "$-" in
    *x*) set +x; threadline_reader_users; set -x ;;
    *) threadline_reader_users ;;
esac
unset -f threadline_reader_users

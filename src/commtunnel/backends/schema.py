"""The schema of both backends, versioned: each migration runs once, in order, in a transaction.

A version means the same tables in SQLite and in PostgreSQL: both lists
below carry the same numbers. SQLite has every version since the first file
was written (1-6); PostgreSQL arrived at version 6, so its first migration
creates the whole version-6 schema at once, and from 7 on every change is
written twice, once per dialect, under one number. A newer library opens an
older database by applying the migrations it lacks; a database written by a
*newer* library than this one is refused rather than guessed at.
Timestamps are stored as ISO 8601 UTC text with microseconds
(``2026-01-01T12:00:00.000000Z``): one fixed width, so text order is time order.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import psycopg

from commtunnel.domain.errors import SCHEMA_TOO_NEW, CommtunnelError

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE orgs (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL
        );
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL REFERENCES orgs(id),
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            display TEXT NOT NULL,
            scopes TEXT NOT NULL,
            test INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            revoked_at TEXT
        );
        CREATE INDEX api_keys_org ON api_keys(org_id);
        CREATE TABLE senders (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL REFERENCES orgs(id),
            value TEXT NOT NULL,
            created_at TEXT NOT NULL,
            UNIQUE (org_id, value)
        );
        CREATE TABLE templates (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL REFERENCES orgs(id),
            name TEXT NOT NULL,
            subject TEXT NOT NULL,
            html TEXT,
            text TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            UNIQUE (org_id, name)
        );
        CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            channel TEXT NOT NULL,
            status TEXT NOT NULL,
            sandbox INTEGER NOT NULL,
            api_key_id TEXT,
            recipient TEXT NOT NULL,
            content TEXT NOT NULL,
            provider_message_id TEXT,
            attempt_count INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX messages_org_created ON messages(org_id, channel, created_at);
        CREATE TABLE events (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            type TEXT NOT NULL,
            status TEXT,
            created_at TEXT NOT NULL,
            details TEXT NOT NULL
        );
        CREATE INDEX events_message ON events(message_id, created_at);
        CREATE INDEX events_org_created ON events(org_id, created_at);
        CREATE TABLE attempts (
            message_id TEXT NOT NULL,
            number INTEGER NOT NULL,
            provider TEXT NOT NULL,
            outcome TEXT NOT NULL,
            error_category TEXT,
            error_message TEXT,
            duration_ms REAL NOT NULL,
            started_at TEXT NOT NULL,
            PRIMARY KEY (message_id, number)
        );
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            message_id TEXT NOT NULL UNIQUE,
            run_at TEXT NOT NULL,
            lease_owner TEXT,
            lease_token TEXT,
            lease_until TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX jobs_due ON jobs(run_at);
        CREATE TABLE idempotency_keys (
            org_id TEXT NOT NULL,
            key TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            message_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            PRIMARY KEY (org_id, key)
        );
        CREATE INDEX idempotency_expiry ON idempotency_keys(expires_at);
        """,
    ),
    (
        2,
        # The SMS channel. Events may now belong to no message (an opt-out
        # change is an organization-level event), so the table is rebuilt:
        # SQLite cannot drop a NOT NULL in place.
        """
        CREATE TABLE events_v2 (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            message_id TEXT,
            type TEXT NOT NULL,
            status TEXT,
            created_at TEXT NOT NULL,
            details TEXT NOT NULL
        );
        INSERT INTO events_v2 (id, org_id, message_id, type, status, created_at, details)
            SELECT id, org_id, message_id, type, status, created_at, details FROM events;
        DROP TABLE events;
        ALTER TABLE events_v2 RENAME TO events;
        CREATE INDEX events_message ON events(message_id, created_at);
        CREATE INDEX events_org_created ON events(org_id, created_at);
        ALTER TABLE orgs ADD COLUMN otp_ignores_opt_out INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE jobs ADD COLUMN attempts_before INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX messages_provider_message_id ON messages(provider_message_id);
        CREATE INDEX messages_org_recipient ON messages(org_id, channel, recipient);
        CREATE TABLE sms_sender_ids (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL REFERENCES orgs(id),
            sender_id TEXT NOT NULL,
            flow TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            review_reason TEXT,
            reviewed_by TEXT,
            reviewed_at TEXT,
            created_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX sms_sender_ids_live
            ON sms_sender_ids(org_id, flow, sender_id COLLATE NOCASE)
            WHERE status IN ('PENDING', 'APPROVED');
        CREATE TABLE sms_opt_outs (
            org_id TEXT NOT NULL REFERENCES orgs(id),
            phone TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (org_id, phone)
        );
        CREATE TABLE otp_cooldowns (
            org_id TEXT NOT NULL,
            recipient TEXT NOT NULL,
            purpose TEXT NOT NULL,
            message_id TEXT NOT NULL,
            until TEXT NOT NULL,
            PRIMARY KEY (org_id, recipient, purpose)
        );
        CREATE TABLE sms_tokens (
            org_id TEXT PRIMARY KEY REFERENCES orgs(id),
            token TEXT NOT NULL,
            token_hash TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL
        );
        CREATE TABLE inbound_messages (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL REFERENCES orgs(id),
            channel TEXT NOT NULL,
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            body TEXT NOT NULL,
            keyword TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX inbound_org_created ON inbound_messages(org_id, channel, created_at);
        """,
    ),
    (
        3,
        # The WhatsApp Cloud channel: tenant lines (the token encrypted), the
        # state of each line (paused on an expired token, flagged on a policy
        # block) and the numbers Meta says stopped marketing messages.
        """
        CREATE TABLE whatsapp_lines (
            org_id TEXT PRIMARY KEY REFERENCES orgs(id),
            phone_number_id TEXT UNIQUE,
            access_token_enc TEXT,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE whatsapp_line_states (
            phone_number_id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            reason TEXT,
            token_fingerprint TEXT,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE whatsapp_opt_outs (
            org_id TEXT NOT NULL REFERENCES orgs(id),
            phone TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (org_id, phone)
        );
        """,
    ),
    (
        4,
        # The SMS webhook token was stored twice: as text and as its SHA-256.
        # The text must stay (the CLI shows the token again), so the digest,
        # derivable and therefore no protection, goes; lookups use the text.
        """
        CREATE TABLE sms_tokens_v4 (
            org_id TEXT PRIMARY KEY REFERENCES orgs(id),
            token TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL
        );
        INSERT INTO sms_tokens_v4 (org_id, token, created_at)
            SELECT org_id, token, created_at FROM sms_tokens;
        DROP TABLE sms_tokens;
        ALTER TABLE sms_tokens_v4 RENAME TO sms_tokens;
        """,
    ),
    (
        5,
        # Customer webhooks and open/click tracking. An endpoint's event filter
        # is stored as ",type,type," (NULL: every event) so the fan-out written
        # with each timeline event can match it with instr(). A delivery's
        # payload is NULL when the body is built from its timeline event. The
        # unique index makes the fan-out of one event to one endpoint happen
        # once (replays are new rows pointing at the original). Server-made
        # secrets (the tracking-token key when COMMTUNNEL_SECRET_KEY is unset)
        # live in instance_secrets so every process of one database shares them.
        """
        CREATE TABLE webhook_endpoints (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL REFERENCES orgs(id),
            url TEXT NOT NULL,
            description TEXT NOT NULL,
            events TEXT,
            enabled INTEGER NOT NULL,
            secret TEXT NOT NULL,
            previous_secret TEXT,
            previous_secret_expires_at TEXT,
            failing_since TEXT,
            disabled_at TEXT,
            disabled_reason TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX webhook_endpoints_org ON webhook_endpoints(org_id, enabled);
        CREATE TABLE webhook_deliveries (
            id TEXT PRIMARY KEY,
            endpoint_id TEXT NOT NULL,
            org_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            message_id TEXT,
            payload TEXT,
            status TEXT NOT NULL,
            attempt_count INTEGER NOT NULL,
            next_attempt_at TEXT,
            lease_token TEXT,
            lease_until TEXT,
            replay_of TEXT,
            last_status_code INTEGER,
            last_error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX webhook_deliveries_once
            ON webhook_deliveries(event_id, endpoint_id) WHERE replay_of IS NULL;
        CREATE INDEX webhook_deliveries_due
            ON webhook_deliveries(next_attempt_at) WHERE status = 'PENDING';
        CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries(endpoint_id, id);
        CREATE INDEX webhook_deliveries_message ON webhook_deliveries(org_id, message_id);
        CREATE TABLE webhook_attempts (
            delivery_id TEXT NOT NULL,
            number INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            duration_ms REAL NOT NULL,
            status_code INTEGER,
            succeeded INTEGER NOT NULL,
            error TEXT,
            response_body TEXT NOT NULL,
            PRIMARY KEY (delivery_id, number)
        );
        CREATE TABLE instance_secrets (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            created_at TEXT NOT NULL
        )
        """,
    ),
    (
        6,
        # The delivery engine: scheduled sends, the message status after each
        # attempt, cursor listing across channels (its index replaces the
        # per-channel one: every insert pays for one index, not two; channel
        # filters read the org's range and skip other channels' rows), per-organization IP
        # allowlists and rate limits (per key too), the email suppression list
        # (and the email events webhook's tokens),
        # provider health as workers report it, and batch answers kept for
        # idempotent replays.
        """
        ALTER TABLE messages ADD COLUMN scheduled_at TEXT;
        CREATE INDEX messages_org_listing ON messages(org_id, created_at, id);
        DROP INDEX messages_org_created;
        ALTER TABLE attempts ADD COLUMN status TEXT;
        ALTER TABLE orgs ADD COLUMN ip_allowlist TEXT;
        ALTER TABLE orgs ADD COLUMN rate_limit TEXT;
        ALTER TABLE api_keys ADD COLUMN rate_limit TEXT;
        CREATE TABLE email_suppressions (
            org_id TEXT NOT NULL REFERENCES orgs(id),
            address TEXT NOT NULL,
            reason TEXT NOT NULL,
            origin TEXT NOT NULL,
            message_id TEXT,
            detail TEXT,
            created_at TEXT NOT NULL,
            expires_at TEXT,
            PRIMARY KEY (org_id, address)
        );
        CREATE INDEX email_suppressions_listing
            ON email_suppressions(org_id, created_at, address);
        CREATE TABLE email_events_tokens (
            org_id TEXT PRIMARY KEY REFERENCES orgs(id),
            token TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL
        );
        CREATE TABLE provider_health (
            provider TEXT NOT NULL,
            channel TEXT NOT NULL,
            state TEXT NOT NULL,
            consecutive_failures INTEGER NOT NULL,
            opened_until TEXT,
            calls INTEGER NOT NULL,
            failures INTEGER NOT NULL,
            last_error TEXT,
            last_error_category TEXT,
            last_error_at TEXT,
            reported_by TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (channel, provider)
        );
        CREATE TABLE email_batches (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            items TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX email_batches_created ON email_batches(created_at)
        """,
    ),
    # 7: PostgreSQL's job wake-up trigger (see POSTGRES_MIGRATIONS); SQLite wakes
    # its workers in process, so its schema is unchanged.
    (7, ""),
]

#: PostgreSQL: the version-6 schema in one step, then the same numbers as above.
#: Types follow SQLite's (timestamps are the same fixed-width UTC text, so text
#: order is time order; flags are 0/1 integers), so that one body of SQL serves
#: both backends.
POSTGRES_MIGRATIONS: list[tuple[int, str]] = [
    (
        6,
        """
        CREATE TABLE orgs (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            otp_ignores_opt_out BIGINT NOT NULL DEFAULT 0,
            ip_allowlist TEXT,
            rate_limit TEXT
        );
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL REFERENCES orgs(id),
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            display TEXT NOT NULL,
            scopes TEXT NOT NULL,
            test BIGINT NOT NULL,
            created_at TEXT NOT NULL,
            revoked_at TEXT,
            rate_limit TEXT
        );
        CREATE INDEX api_keys_org ON api_keys(org_id);
        CREATE TABLE senders (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL REFERENCES orgs(id),
            value TEXT NOT NULL,
            created_at TEXT NOT NULL,
            UNIQUE (org_id, value)
        );
        CREATE TABLE templates (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL REFERENCES orgs(id),
            name TEXT NOT NULL,
            subject TEXT NOT NULL,
            html TEXT,
            text TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            UNIQUE (org_id, name)
        );
        CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            channel TEXT NOT NULL,
            status TEXT NOT NULL,
            sandbox BIGINT NOT NULL,
            api_key_id TEXT,
            recipient TEXT NOT NULL,
            content TEXT NOT NULL,
            provider_message_id TEXT,
            attempt_count BIGINT NOT NULL DEFAULT 0,
            last_error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            scheduled_at TEXT
        );
        CREATE TABLE attempts (
            message_id TEXT NOT NULL,
            number BIGINT NOT NULL,
            provider TEXT NOT NULL,
            outcome TEXT NOT NULL,
            error_category TEXT,
            error_message TEXT,
            duration_ms DOUBLE PRECISION NOT NULL,
            started_at TEXT NOT NULL,
            status TEXT,
            PRIMARY KEY (message_id, number)
        );
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            message_id TEXT NOT NULL UNIQUE,
            run_at TEXT NOT NULL,
            lease_owner TEXT,
            lease_token TEXT,
            lease_until TEXT,
            created_at TEXT NOT NULL,
            attempts_before BIGINT NOT NULL DEFAULT 0
        );
        CREATE INDEX jobs_due ON jobs(run_at);
        CREATE TABLE idempotency_keys (
            org_id TEXT NOT NULL,
            key TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            message_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            PRIMARY KEY (org_id, key)
        );
        CREATE INDEX idempotency_expiry ON idempotency_keys(expires_at);
        CREATE TABLE events (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            message_id TEXT,
            type TEXT NOT NULL,
            status TEXT,
            created_at TEXT NOT NULL,
            details TEXT NOT NULL
        );
        CREATE INDEX events_message ON events(message_id, created_at);
        CREATE INDEX events_org_created ON events(org_id, created_at);
        CREATE INDEX messages_provider_message_id ON messages(provider_message_id);
        CREATE INDEX messages_org_recipient ON messages(org_id, channel, recipient);
        CREATE TABLE sms_sender_ids (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL REFERENCES orgs(id),
            sender_id TEXT NOT NULL,
            flow TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            review_reason TEXT,
            reviewed_by TEXT,
            reviewed_at TEXT,
            created_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX sms_sender_ids_live
            ON sms_sender_ids(org_id, flow, lower(sender_id))
            WHERE status IN ('PENDING', 'APPROVED');
        CREATE TABLE sms_opt_outs (
            org_id TEXT NOT NULL REFERENCES orgs(id),
            phone TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (org_id, phone)
        );
        CREATE TABLE otp_cooldowns (
            org_id TEXT NOT NULL,
            recipient TEXT NOT NULL,
            purpose TEXT NOT NULL,
            message_id TEXT NOT NULL,
            until TEXT NOT NULL,
            PRIMARY KEY (org_id, recipient, purpose)
        );
        CREATE TABLE inbound_messages (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL REFERENCES orgs(id),
            channel TEXT NOT NULL,
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            body TEXT NOT NULL,
            keyword TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX inbound_org_created ON inbound_messages(org_id, channel, created_at);
        CREATE TABLE whatsapp_lines (
            org_id TEXT PRIMARY KEY REFERENCES orgs(id),
            phone_number_id TEXT UNIQUE,
            access_token_enc TEXT,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE whatsapp_line_states (
            phone_number_id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            reason TEXT,
            token_fingerprint TEXT,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE whatsapp_opt_outs (
            org_id TEXT NOT NULL REFERENCES orgs(id),
            phone TEXT NOT NULL,
            source TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (org_id, phone)
        );
        CREATE TABLE sms_tokens (
            org_id TEXT PRIMARY KEY REFERENCES orgs(id),
            token TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL
        );
        CREATE TABLE webhook_endpoints (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL REFERENCES orgs(id),
            url TEXT NOT NULL,
            description TEXT NOT NULL,
            events TEXT,
            enabled BIGINT NOT NULL,
            secret TEXT NOT NULL,
            previous_secret TEXT,
            previous_secret_expires_at TEXT,
            failing_since TEXT,
            disabled_at TEXT,
            disabled_reason TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX webhook_endpoints_org ON webhook_endpoints(org_id, enabled);
        CREATE TABLE webhook_deliveries (
            id TEXT PRIMARY KEY,
            endpoint_id TEXT NOT NULL,
            org_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            message_id TEXT,
            payload TEXT,
            status TEXT NOT NULL,
            attempt_count BIGINT NOT NULL,
            next_attempt_at TEXT,
            lease_token TEXT,
            lease_until TEXT,
            replay_of TEXT,
            last_status_code BIGINT,
            last_error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX webhook_deliveries_once
            ON webhook_deliveries(event_id, endpoint_id) WHERE replay_of IS NULL;
        CREATE INDEX webhook_deliveries_due
            ON webhook_deliveries(next_attempt_at) WHERE status = 'PENDING';
        CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries(endpoint_id, id);
        CREATE INDEX webhook_deliveries_message ON webhook_deliveries(org_id, message_id);
        CREATE TABLE webhook_attempts (
            delivery_id TEXT NOT NULL,
            number BIGINT NOT NULL,
            started_at TEXT NOT NULL,
            duration_ms DOUBLE PRECISION NOT NULL,
            status_code BIGINT,
            succeeded BIGINT NOT NULL,
            error TEXT,
            response_body TEXT NOT NULL,
            PRIMARY KEY (delivery_id, number)
        );
        CREATE TABLE instance_secrets (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX messages_org_listing ON messages(org_id, created_at, id);
        CREATE TABLE email_suppressions (
            org_id TEXT NOT NULL REFERENCES orgs(id),
            address TEXT NOT NULL,
            reason TEXT NOT NULL,
            origin TEXT NOT NULL,
            message_id TEXT,
            detail TEXT,
            created_at TEXT NOT NULL,
            expires_at TEXT,
            PRIMARY KEY (org_id, address)
        );
        CREATE INDEX email_suppressions_listing
            ON email_suppressions(org_id, created_at, address);
        CREATE TABLE email_events_tokens (
            org_id TEXT PRIMARY KEY REFERENCES orgs(id),
            token TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL
        );
        CREATE TABLE provider_health (
            provider TEXT NOT NULL,
            channel TEXT NOT NULL,
            state TEXT NOT NULL,
            consecutive_failures BIGINT NOT NULL,
            opened_until TEXT,
            calls BIGINT NOT NULL,
            failures BIGINT NOT NULL,
            last_error TEXT,
            last_error_category TEXT,
            last_error_at TEXT,
            reported_by TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (channel, provider)
        );
        CREATE TABLE email_batches (
            id TEXT PRIMARY KEY,
            org_id TEXT NOT NULL,
            items TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX email_batches_created ON email_batches(created_at);
        """,
    ),
    (
        7,
        """
        CREATE FUNCTION commtunnel_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('commtunnel_jobs', '');
            RETURN NULL;
        END $$;
        CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OF run_at ON jobs
            FOR EACH STATEMENT EXECUTE FUNCTION commtunnel_jobs_notify();
        """,
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]


class SchemaTooNewError(CommtunnelError):
    """The database was written by a newer Commtunnel than this one (upgrade this one)."""

    code = SCHEMA_TOO_NEW
    http_status = 500


def refuse_newer(version: int) -> int:
    """``version``, unless a newer Commtunnel than this one wrote it.

    Raises:
        SchemaTooNewError: ``version`` is above :data:`LATEST_VERSION`; the
            database is left as it is, never guessed at.
    """
    if version > LATEST_VERSION:
        raise SchemaTooNewError(
            f"Database schema version {version} is newer than this Commtunnel "
            f"supports ({LATEST_VERSION}); upgrade Commtunnel."
        )
    return version


def current_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the file (0 for an empty file)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='schema_version'"
    ).fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, applied_at: str, *, target: int | None = None) -> int:
    """Apply every migration above the file's version up to ``target``.

    Args:
        conn: a connection in autocommit mode (``isolation_level=None``).
        applied_at: timestamp text recorded with each migration.
        target: stop after this version (default: the latest; tests build old files with it).

    Returns:
        The version the file is at afterwards.

    Raises:
        SchemaTooNewError: the file's version is above :data:`LATEST_VERSION`.
    """
    target = LATEST_VERSION if target is None else target
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        version = refuse_newer(current_version(conn))
        for number, script in MIGRATIONS:
            if version < number <= target:  # an empty script changes nothing but the version
                # One statement at a time: executescript() would COMMIT the open
                # transaction first. So no migration may hold a ";" inside a
                # statement (a string literal, a trigger body).
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (number, applied_at),
                )
                version = number
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return version


#: The newest version of either list (they must end at the same number).
assert POSTGRES_MIGRATIONS[-1][0] == LATEST_VERSION

#: The advisory lock that serializes PostgreSQL migrations: N processes that
#: start at once apply each migration once, the rest wait and find it applied.
POSTGRES_MIGRATION_LOCK = 0x636F6D6D74756E  # "commtun"


def postgres_version(conn: psycopg.Connection[Any]) -> int:
    """The schema version of the connection's schema (0 when it holds no Commtunnel tables)."""
    exists = conn.execute("SELECT to_regclass('schema_version')").fetchone()
    if exists is None or exists[0] is None:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0) if row is not None else 0


def migrate_postgres(
    conn: psycopg.Connection[Any], applied_at: str, *, target: int | None = None
) -> int:
    """Apply every PostgreSQL migration above the schema's version up to ``target``.

    All of it runs in one transaction holding :data:`POSTGRES_MIGRATION_LOCK`
    (``pg_advisory_xact_lock``), so concurrent starters migrate once and a
    failure leaves the schema as it was (PostgreSQL's DDL is transactional).
    The tables go in the connection's ``search_path`` schema.

    Args:
        conn: a connection not in autocommit mode, with no transaction open.
        applied_at: timestamp text recorded with each migration.
        target: stop after this version (default: the latest; tests build old schemas).

    Returns:
        The version the schema is at afterwards.

    Raises:
        SchemaTooNewError: the schema's version is above :data:`LATEST_VERSION`.
        psycopg.Error: a statement failed; nothing was changed.
    """
    target = LATEST_VERSION if target is None else target
    with conn.transaction():
        version = postgres_version(conn)
        if version == target:  # the usual start: nothing to do, no lock taken
            return version
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (POSTGRES_MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version "
            "(version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        version = refuse_newer(postgres_version(conn))
        for number, script in POSTGRES_MIGRATIONS:
            if version < number <= target:
                conn.execute(script)  # several statements in one: no parameters allowed
                conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
                    (number, applied_at),
                )
                version = number
    return version

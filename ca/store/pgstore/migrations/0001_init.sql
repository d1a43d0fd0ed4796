-- meshca's state in PostgreSQL, version 1. Times are Unix nanoseconds
-- (bigint), as the Go values carry them, so that ordering and cutoffs are
-- exact; each row's full record is the JSON that boltstore stores too.
-- Serials, hashes and SPIFFE IDs sort bytewise (COLLATE "C").

-- The CA's key material and rotation state: one row, replaced as a whole
-- by compare-and-swap on version.
CREATE TABLE meshca_ca_state (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint  NOT NULL CHECK (version > 0),
    state   json    NOT NULL
);

-- The issuance log.
CREATE TABLE meshca_issuances (
    serial       text COLLATE "C" PRIMARY KEY,
    spiffe_id    text COLLATE "C" NOT NULL,
    issued_at_ns bigint NOT NULL,
    not_after_ns bigint NOT NULL,
    record       json   NOT NULL
);
CREATE INDEX meshca_issuances_by_issued_at ON meshca_issuances (issued_at_ns, serial);
CREATE INDEX meshca_issuances_by_spiffe_id ON meshca_issuances (spiffe_id, issued_at_ns, serial);
CREATE INDEX meshca_issuances_by_not_after ON meshca_issuances (not_after_ns);

-- The revocation deny-list: one entry per serial, one per SPIFFE ID and
-- revocation time. expires_at_ns is NULL for entries never pruned.
CREATE TABLE meshca_revoked_serials (
    serial        text COLLATE "C" PRIMARY KEY,
    expires_at_ns bigint,
    record        json NOT NULL
);
CREATE TABLE meshca_revoked_ids (
    spiffe_id     text COLLATE "C" NOT NULL,
    revoked_at_ns bigint NOT NULL,
    expires_at_ns bigint,
    record        json NOT NULL,
    PRIMARY KEY (spiffe_id, revoked_at_ns)
);

-- Join tokens, by hash; consumed by setting used_at_ns once.
CREATE TABLE meshca_join_tokens (
    hash          text COLLATE "C" PRIMARY KEY,
    spiffe_id     text   NOT NULL,
    created_at_ns bigint NOT NULL,
    expires_at_ns bigint NOT NULL,
    used_at_ns    bigint,
    used_by       text   NOT NULL DEFAULT ''
);
CREATE INDEX meshca_join_tokens_by_expiry ON meshca_join_tokens (expires_at_ns);

-- The last successful Ping of each replica (Options.Replica).
CREATE TABLE meshca_heartbeats (
    replica   text PRIMARY KEY,
    pinged_at timestamptz NOT NULL
);

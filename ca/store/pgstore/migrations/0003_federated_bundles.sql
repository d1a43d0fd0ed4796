-- meshca's state in PostgreSQL, version 3: the last good bundle of each
-- trust domain the CA federates with, its record the JSON boltstore
-- stores too.
CREATE TABLE meshca_federated_bundles (
    trust_domain text COLLATE "C" PRIMARY KEY,
    record       json NOT NULL
);

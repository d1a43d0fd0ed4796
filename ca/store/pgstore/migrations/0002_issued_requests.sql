-- Answers to requests that get one certificate at most (store.IssuedRequest:
-- a Kubernetes PodCertificateRequest, by its UID), each with the issuance
-- record it was recorded with; pruned with that record.
CREATE TABLE meshca_issued_requests (
    request text COLLATE "C" PRIMARY KEY,
    serial  text COLLATE "C" NOT NULL UNIQUE REFERENCES meshca_issuances (serial) ON DELETE CASCADE,
    answer  json NOT NULL
);

// Package sds is meshca's agent: it keeps a workload's X.509-SVID fresh and
// hands it to Envoy (SDS, package sds/envoy) and to SPIFFE Workload API
// clients (package sds/workload).
//
// The Manager generates the workload's key locally, asks the CA for a
// certificate through the CSR API (ca/client), renews at a fraction of the
// lifetime with jitter, retries with capped exponential backoff while the CA
// is down, and keeps serving the still-valid SVID meanwhile. Servers read the
// current SVID from a Source and are told when it changes.
package sds

// Package sds will be meshca's agent: local key generation, the secret cache
// and rotation, the Envoy SDS server and the SPIFFE Workload API.
//
// Not built yet (issue "The agent"); it holds no code so that nothing can
// depend on a stub. The agent will reach the CA only through ca/client.
package sds

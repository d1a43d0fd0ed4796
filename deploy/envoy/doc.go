// Package envoy holds no code: its directory keeps meshca's Envoy bootstrap
// (envoy.yaml), whose listeners and clusters get their certificate and
// trust bundle from `meshca agent` over SDS, and its test, which parses the
// bootstrap with go-control-plane's Envoy types and validates it, as Envoy
// would at start.
package envoy

package server

import "github.com/spf13/pflag"

// AddFlags registers the flags of `meshca server` that set l (with the
// defaults documented on Limits; docs/configuration.md lists them).
func (l *Limits) AddFlags(fs *pflag.FlagSet) {
	fs.IntVar(&l.MaxRequestBytes, "max-request-bytes", DefaultMaxRequestBytes, "largest request message or body accepted")
	fs.DurationVar(&l.RequestTimeout, "request-timeout", DefaultRequestTimeout, "deadline for one API call")
	fs.DurationVar(&l.IdleTimeout, "idle-timeout", DefaultIdleTimeout, "close connections idle this long on every listener")
	fs.IntVar(&l.MaxConnections, "max-connections", DefaultMaxConnections, "most connections open at once on each listener; negative: no cap")
	fs.Float64Var(&l.UnauthenticatedRate, "unauthenticated-rate", DefaultUnauthenticatedRate, "requests per second each source address (IPv6: /64) may make that fail authentication, past the burst; then ResourceExhausted/429; negative: no limit")
	fs.IntVar(&l.UnauthenticatedBurst, "unauthenticated-burst", DefaultUnauthenticatedBurst, "burst of requests failing authentication allowed per source address")
	fs.IntVar(&l.MaxInFlightCSRs, "max-inflight-csrs", 0, "CSRs attested, signed and recorded at once; more wait in line; 0: 32 per CPU; negative: no bound")
	fs.DurationVar(&l.CSRQueueWait, "csr-queue-wait", DefaultCSRQueueWait, "longest wait in line for a signing slot; a CSR that cannot be served within it gets ResourceExhausted/429 with a retry hint at once")
	fs.IntVar(&l.MaxQueuedCSRs, "max-queued-csrs", DefaultMaxQueuedCSRs, "most CSRs waiting in line for a signing slot; negative: no line")
	fs.IntVar(&l.MaxStreamsPerConnection, "max-streams-per-connection", DefaultMaxStreamsPerConnection, "gRPC calls open at once on one connection; a client with more queues its own")
}

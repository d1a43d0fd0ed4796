// Package server exposes meshca's CA over the network: the Istio-compatible
// gRPC CSR API (istio.v1.auth.IstioCertificateService/CreateCertificate), a
// plain HTTPS/JSON API for scripts (POST /v1/sign, GET /v1/bundle), and a
// plain-HTTP monitoring port (/healthz, /readyz, /metrics).
//
// Both CSR APIs listen with TLS using a certificate issued by the CA itself,
// take the caller's credential from an "authorization: Bearer" header or the
// TLS client certificate, hand it to an attestor, and map errors to status
// codes only here, at the edge.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/metrics"
)

// Defaults for Config's zero fields.
const (
	DefaultMaxRequestBytes = 64 << 10
	DefaultRequestTimeout  = 10 * time.Second
	DefaultServingTTL      = 24 * time.Hour
	DefaultIdleTimeout     = 5 * time.Minute
	DefaultMaxConnections  = 10_000
	// DefaultUnauthenticatedRate and DefaultUnauthenticatedBurst bound the
	// requests per source address that fail authentication: a client whose
	// token is stale retries a few times a minute, not five times a second.
	DefaultUnauthenticatedRate  = 5.0
	DefaultUnauthenticatedBurst = 50
	// DefaultMaxQueuedCSRs and DefaultCSRQueueWait bound the line of CSRs
	// waiting for a signing slot.
	//
	// DefaultMaxStreamsPerConnection bounds the calls one connection has
	// open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS): past it a
	// client waits for one of its own calls to end before it sends the
	// next, at no cost to the CA. An agent has one CSR open at a time. A
	// node agent (ztunnel) renewing for every pod of its node at once has
	// four in the CA and keeps the rest: a renewal storm from a few hundred
	// nodes then waits at the nodes, each served in turn, instead of in the
	// CA's memory or in shed calls and retries, and a CSR once sent waits
	// in line at most the line's wait (BENCHMARKS.md, "Rotation storm").
	// Four open calls carry thousands of CSRs a second for one caller (a
	// CSR costs the CA about 0.2 ms of CPU). The HTTP/2 RFC recommends at
	// least 100 for servers in general, whose streams may be long-lived;
	// every call here but a health Watch is unary and short. Many more connections than
	// that (an agent per pod) still reach the line, and what it cannot
	// serve in time is shed with a retry hint.
	DefaultMaxQueuedCSRs            = 4096
	DefaultCSRQueueWait             = 500 * time.Millisecond
	DefaultMaxStreamsPerConnection  = 4
	defaultInFlightCSRsPerProcessor = 32
)

// paceBoundSignatures bounds the pace the gate's retry hints assume: never
// slower than one request per this many of the CA's fastest signatures
// (Authority.SigningCost: a leaf's signature and its check) on each
// processor. An issuance costs about four of those end to end (with the
// CSR's check, TLS and gRPC; a leaf's check with the CA's private key is
// the cheaper part of one); the bound is well past that, so that it only cuts a
// pace a flood has made absurd (BENCHMARKS.md, "Rotation storm": a run whose
// hints assumed 4 ms a request, thirty times what the CA then served).
const paceBoundSignatures = 14

// DefaultMaxInFlightCSRs is the default number of CSRs processed at once:
// enough per core to keep the cores busy while others wait for their
// record's fsync (group commit needs company; at 16 a processor the
// machine was 4-6 % idle in a storm, at 32 2-3 %), few enough that a storm
// waits in a bounded line instead of in thousands of goroutines.
func DefaultMaxInFlightCSRs() int {
	return defaultInFlightCSRsPerProcessor * runtime.GOMAXPROCS(0)
}

// A gRPC connection is closed after maxConnectionAge (with a GOAWAY, so the
// client opens a new one first) and given maxConnectionAgeGrace to finish
// the calls on it. Agents keep one connection for days otherwise; a
// reconnect every half hour costs one TLS handshake, and it spreads agents
// over the replicas of a scaled-out CA and puts them on its current serving
// certificate. Calls are bounded by RequestTimeout, so the grace is ample.
const (
	maxConnectionAge      = 30 * time.Minute
	maxConnectionAgeGrace = 5 * time.Minute
)

// Flow-control windows for gRPC. Fixed windows turn off gRPC's bandwidth
// estimator, which otherwise sends a PING and a connection WINDOW_UPDATE
// after most requests: a CSR is a few KiB, there is no bandwidth to probe
// for, and while a handler waits for its record's fsync those frames leave
// in a write (and a TLS record) of their own, which the client must read
// and answer. A stream may send 64 KiB before an update (what gRPC starts
// with, and the default bound on a request); the connection 1 MiB, so
// many calls in flight on one connection do not wait for updates.
const (
	streamWindow = 64 << 10
	connWindow   = 1 << 20
)

// monitorMaxHeaderBytes bounds the request headers on the monitoring port:
// a Prometheus scrape or a kubelet probe sends a few hundred bytes.
const monitorMaxHeaderBytes = 16 << 10

// monitorReadHeaderTimeout bounds how long the monitoring port waits for
// a request's headers (slowloris), and for a TLS-less idle connection's
// first request.
const monitorReadHeaderTimeout = 5 * time.Second

// maxHeaderBytes bounds the request metadata of a gRPC call (gRPC's own
// default is 16 MiB): an authorization header with a JWT is a few KiB.
const maxHeaderBytes = 32 << 10

// Limits bound what callers can take of the CA's listeners. Zero fields get
// the documented defaults when the Server is built.
type Limits struct {
	// MaxRequestBytes bounds one request message or body. Default 64 KiB.
	MaxRequestBytes int
	// RequestTimeout bounds the time spent on one call, and on the TLS
	// handshake and request headers of a new connection. Default 10s.
	RequestTimeout time.Duration
	// IdleTimeout closes a connection on any listener that has carried no
	// call for this long (gRPC MaxConnectionIdle, HTTP IdleTimeout), so
	// idle clients cannot hold the CA's descriptors. Default 5m.
	IdleTimeout time.Duration
	// MaxConnections caps the connections open at once on each listener;
	// past it, new ones wait in the kernel's accept queue. Default 10,000;
	// negative: no cap.
	MaxConnections int
	// UnauthenticatedRate (per second) and UnauthenticatedBurst size the
	// token bucket of each source address (IPv6: each /64) that requests
	// failing authentication spend; a source with an empty bucket gets
	// ResourceExhausted (HTTP 429) before its credential is looked at.
	// Defaults 5/s and 50; a negative rate: no limit.
	UnauthenticatedRate  float64
	UnauthenticatedBurst int
	// MaxInFlightCSRs bounds the CSRs processed at once, attestation,
	// signing and the durable record included (both APIs share it). A CSR
	// finding them all busy waits in line for at most CSRQueueWait, with
	// at most MaxQueuedCSRs in line; one that cannot be served within the
	// wait is refused at once with ResourceExhausted (HTTP 429) and a
	// retry hint. Defaults 32 per processor, 500ms and 4096; a negative
	// MaxInFlightCSRs: no bound.
	MaxInFlightCSRs int
	CSRQueueWait    time.Duration
	MaxQueuedCSRs   int
	// MaxStreamsPerConnection bounds the gRPC calls open at once on one
	// connection (HTTP/2 MAX_CONCURRENT_STREAMS); a client with more waits
	// for one of its own to finish before sending. Default 4.
	MaxStreamsPerConnection int
}

// Config configures a Server. Zero fields get the documented defaults.
type Config struct {
	// Authority signs. Required.
	Authority *ca.Authority
	// Attestor proves callers' identities. Required.
	Attestor attestor.Attestor
	// Impersonator decides the gRPC API's requests for another identity
	// than the caller's (an ImpersonatedIdentity in the request's
	// metadata: Istio ambient's ztunnel). Nil refuses them all.
	Impersonator Impersonator
	// Ready, when set, is asked on /readyz after the Authority: parts the
	// CA cannot serve without that get ready after start (the Kubernetes
	// informer caches). Its error is /readyz's 503 answer.
	Ready func(context.Context) error
	// Federation gives the bundles of the trust domains the CA federates
	// with (ca/federation), answered beside its own by the bundle calls
	// (BundleServiceName, FetchJWTBundle). Nil: none.
	Federation FederatedBundles
	// AdminToken enables the admin API (/v1/admin/...) on the HTTPS port
	// for callers presenting it as a bearer token. Empty disables it.
	AdminToken string
	// GRPCAddr is the gRPC CSR API listen address; "" disables it.
	GRPCAddr string
	// HTTPSAddr is the HTTPS/JSON API listen address; "" disables it.
	HTTPSAddr string
	// MonitorAddr is the plain-HTTP health and metrics address; "" disables it.
	MonitorAddr string
	// Profiling adds Go's profiler (/debug/pprof/) to the monitoring
	// listener. Off by default.
	Profiling bool
	// DNSNames and IPs go into the server's TLS certificate. Default
	// "localhost" and 127.0.0.1, ::1.
	DNSNames []string
	IPs      []net.IP
	// ServingTTL is the server certificate's lifetime. Default 24h.
	ServingTTL time.Duration
	// Limits bound what callers can take of the listeners.
	Limits
	// Registry receives the server's metrics and is served on /metrics.
	// Default: a new private registry.
	Registry *prometheus.Registry
	// Clock defaults to the wall clock; Logger to discarding.
	Clock  clock.Clock
	Logger *slog.Logger
}

// Server runs the CA's listeners.
type Server struct {
	cfg     Config
	certs   *servingCerts
	metrics *metrics.API

	grpc     *grpc.Server
	https    *http.Server
	monitor  *http.Server
	failures *failureLimiter // nil: no limit
	gate     *gate           // nil: no bound

	mu    sync.Mutex
	addrs map[string]net.Addr
	wg    sync.WaitGroup
}

// New builds a Server; Start opens its listeners.
func New(cfg Config) (*Server, error) {
	if cfg.Authority == nil || cfg.Attestor == nil {
		return nil, errors.New("server: an authority and an attestor are required")
	}
	if cfg.DNSNames == nil && cfg.IPs == nil {
		cfg.DNSNames = []string{"localhost"}
		cfg.IPs = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	setDefault(&cfg.ServingTTL, DefaultServingTTL)
	setDefault(&cfg.MaxRequestBytes, DefaultMaxRequestBytes)
	setDefault(&cfg.RequestTimeout, DefaultRequestTimeout)
	setDefault(&cfg.IdleTimeout, DefaultIdleTimeout)
	setDefault(&cfg.MaxConnections, DefaultMaxConnections)
	setDefault(&cfg.UnauthenticatedRate, DefaultUnauthenticatedRate)
	if cfg.UnauthenticatedBurst <= 0 {
		cfg.UnauthenticatedBurst = DefaultUnauthenticatedBurst
	}
	setDefault(&cfg.MaxInFlightCSRs, DefaultMaxInFlightCSRs())
	setDefault(&cfg.CSRQueueWait, DefaultCSRQueueWait)
	setDefault(&cfg.MaxQueuedCSRs, DefaultMaxQueuedCSRs)
	setDefault(&cfg.MaxStreamsPerConnection, DefaultMaxStreamsPerConnection)
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	cfg.Clock = clock.OrReal(cfg.Clock)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		cfg:     cfg,
		certs:   &servingCerts{auth: cfg.Authority, dns: cfg.DNSNames, ips: cfg.IPs, ttl: cfg.ServingTTL, clock: cfg.Clock},
		metrics: metrics.NewAPI(cfg.Registry),
		addrs:   map[string]net.Addr{},
	}
	if cfg.UnauthenticatedRate > 0 {
		s.failures = newFailureLimiter(cfg.UnauthenticatedRate, cfg.UnauthenticatedBurst, cfg.Clock)
	}
	if cfg.MaxInFlightCSRs > 0 {
		s.gate = newGate(cfg.MaxInFlightCSRs, max(cfg.MaxQueuedCSRs, 0), cfg.CSRQueueWait, cfg.Clock)
		s.gate.onShed = s.metrics.Shed
		procs := time.Duration(runtime.GOMAXPROCS(0))
		s.gate.maxPace = func() time.Duration { return cfg.Authority.SigningCost() * paceBoundSignatures / procs }
		s.metrics.Gate(func() float64 { return float64(s.gate.inFlight()) }, func() float64 { return float64(s.gate.queued.Load()) })
	}
	tlsCfg := s.certs.tlsConfig()
	s.grpc = grpc.NewServer(
		grpc.Creds(grpcCredentials(tlsCfg)),
		grpc.MaxRecvMsgSize(cfg.MaxRequestBytes),
		grpc.MaxHeaderListSize(uint32(maxHeaderBytes)),
		grpc.MaxConcurrentStreams(uint32(min(max(cfg.MaxStreamsPerConnection, 1), 1<<20))), //nolint:gosec // G115: clamped
		grpc.ConnectionTimeout(cfg.RequestTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle:     cfg.IdleTimeout,
			MaxConnectionAge:      maxConnectionAge,
			MaxConnectionAgeGrace: maxConnectionAgeGrace,
		}),
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.ChainUnaryInterceptor(s.deadlineInterceptor),
		// Handlers run on long-lived workers, one per signing slot, whose
		// stacks have already grown to what signing needs, instead of a
		// new goroutine per request growing its stack each time
		// (runtime.morestack was 3 % of a profile under load). Past them,
		// gRPC starts goroutines as before.
		grpc.NumStreamWorkers(uint32(min(max(cfg.MaxInFlightCSRs, 1), 1<<12))), //nolint:gosec // G115: clamped
	)
	pb.RegisterIstioCertificateServiceServer(s.grpc, &istioService{s: s})
	s.grpc.RegisterService(&jwtServiceDesc, &jwtService{s: s})
	s.grpc.RegisterService(&bundleServiceDesc, &bundleService{s: s})
	healthpb.RegisterHealthServer(s.grpc, &healthService{s: s})

	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sign", s.handleSign)
	mux.HandleFunc("GET /v1/bundle", s.handleBundle)
	if cfg.AdminToken != "" {
		mux.HandleFunc("POST /v1/admin/join-tokens", s.adminAuth(s.handleCreateJoinToken))
		mux.HandleFunc("GET /v1/admin/issuances", s.adminAuth(s.handleIssuances))
		mux.HandleFunc("POST /v1/admin/revocations", s.adminAuth(s.handleRevoke))
		mux.HandleFunc("GET /v1/admin/ca", s.adminAuth(s.handleCAStatus))
		mux.HandleFunc("POST /v1/admin/root-rotation", s.adminAuth(s.handleRootRotation))
		mux.HandleFunc("POST /v1/admin/intermediate-rotation", s.adminAuth(s.handleIntermediateRotation))
	}
	s.https = &http.Server{
		Handler:           http.TimeoutHandler(mux, cfg.RequestTimeout, `{"error":"request timed out"}`),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: cfg.RequestTimeout,
		ReadTimeout:       cfg.RequestTimeout,
		WriteTimeout:      cfg.RequestTimeout + time.Second,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxRequestBytes,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}

	mon := http.NewServeMux()
	mon.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mon.HandleFunc("GET /readyz", s.handleReady)
	mon.Handle("GET /metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
	if cfg.Profiling {
		mon.HandleFunc("GET /debug/pprof/", pprof.Index)
		mon.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mon.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	s.monitor = &http.Server{
		Handler:           mon,
		ReadHeaderTimeout: min(monitorReadHeaderTimeout, cfg.RequestTimeout),
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    monitorMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// Start opens the configured listeners and serves in the background.
func (s *Server) Start() error {
	type listener struct {
		name, addr string
		serve      func(net.Listener) error
	}
	ls := []listener{
		{"grpc", s.cfg.GRPCAddr, s.grpc.Serve},
		{"https", s.cfg.HTTPSAddr, func(l net.Listener) error { return s.https.ServeTLS(l, "", "") }},
		{"monitor", s.cfg.MonitorAddr, s.monitor.Serve},
	}
	// Open every listener before serving any, so a failure leaves nothing
	// half started.
	type open struct {
		listener
		ln net.Listener
	}
	var opened []open
	for _, l := range ls {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			for _, o := range opened {
				_ = o.ln.Close() // the start-up error is the one to report
			}
			return fmt.Errorf("server: listen %s on %s: %w", l.name, l.addr, err)
		}
		if s.cfg.MaxConnections > 0 {
			ln = newLimitListener(ln, s.cfg.MaxConnections)
		}
		opened = append(opened, open{l, ln})
	}
	for _, o := range opened {
		s.mu.Lock()
		s.addrs[o.name] = o.ln.Addr()
		s.mu.Unlock()
		s.cfg.Logger.Info("listening", "api", o.name, "addr", o.ln.Addr().String())
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := o.serve(o.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) {
				s.cfg.Logger.Error("listener stopped", "api", o.name, "err", err)
			}
		}()
	}
	return nil
}

// Addr returns the bound address of "grpc", "https" or "monitor", or nil.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[name]
}

// Shutdown stops accepting calls and waits for those in flight until ctx
// ends, then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	errs := []error{s.https.Shutdown(ctx), s.monitor.Shutdown(ctx)}
	select {
	case <-done:
	case <-ctx.Done():
		s.grpc.Stop()
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

func (s *Server) deadlineInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	return h(ctx, req)
}

// ready is what /readyz and the gRPC health service answer: nil while the
// CA can issue.
func (s *Server) ready(ctx context.Context) error {
	err := s.cfg.Authority.Ready(ctx)
	if err == nil && s.cfg.Ready != nil {
		err = s.cfg.Ready(ctx)
	}
	return err
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	if err := s.ready(r.Context()); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
	for _, warning := range s.cfg.Authority.Warnings() { // ready, but not for long
		fmt.Fprintln(w, "warning:", warning)
	}
}

// setDefault sets *v to def when it is zero.
func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

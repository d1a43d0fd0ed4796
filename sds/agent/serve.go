package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/envoy"
	"github.com/meshca/meshca/sds/socket"
	"github.com/meshca/meshca/sds/workload"
)

// serve starts the SDS and Workload API servers and the monitoring port.
func (a *Agent) serve(ctx context.Context) error {
	if a.cfg.SDSSocket != "" || a.cfg.SDSTCPAddr != "" {
		s, err := envoy.New(envoy.Config{Source: a.mgr, Logger: a.cfg.Logger, Metrics: a.metrics, SPIFFEValidator: a.cfg.SDSSPIFFEValidator})
		if err != nil {
			return err
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if err := s.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				a.cfg.Logger.Error("SDS server stopped", "err", err)
			}
		}()
		if err := a.serveUnix(a.cfg.SDSSocket, s.Register); err != nil {
			return err
		}
		if err := a.serveSDSOverTCP(s); err != nil {
			return err
		}
	}
	if a.cfg.WorkloadSocket != "" {
		s, err := workload.New(workload.Config{Source: a.mgr, JWT: a.jwt, Logger: a.cfg.Logger})
		if err != nil {
			return err
		}
		go func() { <-ctx.Done(); s.Close() }()
		if err := a.serveUnix(a.cfg.WorkloadSocket, s.Register); err != nil {
			return err
		}
	}
	return a.serveMonitoring()
}

// serveUnix serves a gRPC API on a Unix socket ("" does nothing).
func (a *Agent) serveUnix(path string, register func(*grpc.Server)) error {
	if path == "" {
		return nil
	}
	ln, err := socket.Listen(path, a.cfg.Logger)
	if err != nil {
		return err
	}
	g := grpc.NewServer(grpc.Creds(socket.Credentials()), grpc.MaxRecvMsgSize(maxRecvMsgSize))
	register(g)
	a.start(g, ln)
	return nil
}

func (a *Agent) start(g *grpc.Server, ln net.Listener) {
	a.grpc = append(a.grpc, g)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := g.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			a.cfg.Logger.Error("gRPC listener stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
}

// serveSDSOverTCP serves SDS on TCP with mTLS: the agent presents the
// workload's SVID and accepts only the allowed SPIFFE IDs, verified against
// the current bundle (go-spiffe's tlsconfig, TLS 1.2 or later).
func (a *Agent) serveSDSOverTCP(s *envoy.Server) error {
	if a.cfg.SDSTCPAddr == "" {
		return nil
	}
	src := sds.SPIFFESource{Source: a.mgr}
	tlsCfg := tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeOneOf(a.cfg.SDSTCPAllow...))
	tlsCfg.MinVersion = tls.VersionTLS12
	ln, err := net.Listen("tcp", a.cfg.SDSTCPAddr)
	if err != nil {
		return fmt.Errorf("agent: SDS over TCP: %w", err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)), grpc.MaxRecvMsgSize(maxRecvMsgSize))
	s.Register(g)
	a.sdsTCP = ln.Addr()
	a.start(g, ln)
	return nil
}

// The monitoring port closes a connection idle for monitorIdleTimeout (a
// Prometheus scrape or kubelet probe reconnects cheaply, and idle clients
// must not hold the agent's descriptors), waits monitorReadHeaderTimeout
// for a request's headers, and takes at most monitorMaxHeaderBytes of them.
const (
	monitorIdleTimeout       = 5 * time.Minute
	monitorReadHeaderTimeout = 5 * time.Second
	monitorMaxHeaderBytes    = 16 << 10
)

// serveMonitoring serves /healthz, /readyz (not ready without a valid
// SVID) and /metrics.
func (a *Agent) serveMonitoring() error {
	if a.cfg.MonitorAddr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.mgr.Ready(a.cfg.Clock.Now()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ok: SVID valid until %s\n", a.mgr.Current().NotAfter().UTC().Format(time.RFC3339))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", a.cfg.MonitorAddr)
	if err != nil {
		return fmt.Errorf("agent: monitoring: %w", err)
	}
	a.monAddr = ln.Addr()
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: monitorReadHeaderTimeout,
		IdleTimeout:       monitorIdleTimeout,
		MaxHeaderBytes:    monitorMaxHeaderBytes,
	}
	a.stopMon = func() {
		ctx, cancel := context.WithTimeout(context.Background(), drainGrace)
		defer cancel()
		_ = srv.Shutdown(ctx) // past the grace, connections are dropped
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.cfg.Logger.Error("monitoring listener stopped", "err", err)
		}
	}()
	return nil
}

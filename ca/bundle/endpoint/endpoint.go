// Package endpoint serves the trust bundle as a SPIFFE bundle endpoint
// (SPIFFE Trust Domain and Bundle, section 5): GET / over HTTPS answers the
// bundle as a JWKS, one key of use "x509-svid" per root with the
// certificate in x5c, one of use "jwt-svid" per JWT signing key (when the
// Source is a JWTSource, as ca.Authority is), with spiffe_refresh_hint (how often a federated peer
// should fetch it again) and spiffe_sequence. go-spiffe's spiffebundle
// marshals it and its federation client reads it.
//
// Two profiles authenticate the endpoint to its peers:
//
//   - https_web: a certificate and key from files, verified by peers with
//     web PKI roots; the files are read again when they change (checked at
//     most every ReloadInterval, during a handshake);
//   - https_spiffe: an X509-SVID for the endpoint's own SPIFFE ID, issued by
//     this CA through SVIDIssuer and renewed at half its lifetime, verified
//     by peers against a bundle of this trust domain they already hold
//     (obtained once out of band).
//
// The bundle is read from the Source at each request, and compared with
// the one last served: when it differs, spiffe_sequence increases. It
// starts at the Unix time of the first bundle served and becomes the Unix
// time of each change (one more than before when changes come faster than
// one a second), so that it grows across restarts as well; replicas may
// serve different sequence numbers for the same bundle.
//
// Only GET and HEAD of / are served (405 for other methods, 404 for other
// paths); request headers are capped at 8 KiB (431) and every phase of a
// request is bounded by timeouts.
package endpoint

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/pki"
)

// Request limits of the endpoint's HTTP server.
const (
	maxHeaderBytes = 8 << 10
	requestTimeout = 10 * time.Second
	idleTimeout    = 2 * time.Minute
)

// DefaultReloadInterval is how often, at most, https_web's files are
// checked for changes.
const DefaultReloadInterval = 10 * time.Second

// DefaultIDPath is the path of the https_spiffe endpoint's default SPIFFE
// ID in the trust domain.
const DefaultIDPath = "/meshca/bundle-endpoint"

// Config configures a Server. Zero fields get the documented defaults.
type Config struct {
	// Addr is the listen address. Required.
	Addr string
	// TrustDomain whose bundle is served. Required.
	TrustDomain spiffeid.TrustDomain
	// Source gives the bundle. Required.
	Source bundle.Source
	// RefreshHint is the spiffe_refresh_hint; default
	// bundle.DefaultRefreshHint.
	RefreshHint time.Duration
	// Profile is bundle.ProfileSPIFFE (default) or bundle.ProfileWeb.
	Profile string
	// CertFile and KeyFile are https_web's certificate chain and key (PEM).
	CertFile, KeyFile string
	// ReloadInterval bounds how often https_web's files are checked;
	// default DefaultReloadInterval.
	ReloadInterval time.Duration
	// ID is https_spiffe's SPIFFE ID; default DefaultIDPath in TrustDomain.
	ID spiffeid.ID
	// Issuer issues https_spiffe's SVIDs. Required for that profile.
	Issuer SVIDIssuer
	// Clock, Logger and Metrics default to the wall clock, discarding and
	// bundle.NopMetrics.
	Clock   clock.Clock
	Logger  *slog.Logger
	Metrics bundle.Metrics
}

// JWTSource is a Source that also has JWT-SVID signing keys to publish.
type JWTSource interface {
	JWTBundle() *jwtbundle.Bundle
}

// Server is a SPIFFE bundle endpoint.
type Server struct {
	cfg   Config
	certs interface {
		get(*tls.ClientHelloInfo) (*tls.Certificate, error)
	}
	srv *http.Server

	mu  sync.Mutex // serializes building a new document
	doc atomic.Pointer[document]
	ln  net.Listener
}

// document is one bundle as served.
type document struct {
	pem  []byte
	jwt  *jwtbundle.Bundle // nil without a JWTSource
	json []byte
	seq  uint64
}

// New checks cfg and returns a Server; Start opens its listener.
func New(cfg Config) (*Server, error) {
	if cfg.Addr == "" || cfg.TrustDomain.IsZero() || cfg.Source == nil {
		return nil, errors.New("endpoint: an address, a trust domain and a source are required")
	}
	if cfg.RefreshHint <= 0 {
		cfg.RefreshHint = bundle.DefaultRefreshHint
	}
	if cfg.ReloadInterval <= 0 {
		cfg.ReloadInterval = DefaultReloadInterval
	}
	cfg.Clock = clock.OrReal(cfg.Clock)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Metrics = bundle.OrNop(cfg.Metrics)
	s := &Server{}
	switch cfg.Profile {
	case "", bundle.ProfileSPIFFE:
		if cfg.CertFile != "" || cfg.KeyFile != "" {
			return nil, errors.New("endpoint: certificate files are for the https_web profile; https_spiffe serves an SVID of this CA")
		}
		if cfg.Issuer == nil {
			return nil, errors.New("endpoint: the https_spiffe profile needs an SVID issuer")
		}
		if cfg.ID.IsZero() {
			id, err := spiffeid.FromPath(cfg.TrustDomain, DefaultIDPath)
			if err != nil {
				return nil, err
			}
			cfg.ID = id
		}
		if !cfg.ID.MemberOf(cfg.TrustDomain) {
			return nil, fmt.Errorf("endpoint: SPIFFE ID %s is not in trust domain %s", cfg.ID, cfg.TrustDomain.Name())
		}
		cfg.Profile = bundle.ProfileSPIFFE
		s.certs = &svidCert{issuer: cfg.Issuer, id: cfg.ID, clock: cfg.Clock, log: cfg.Logger}
	case bundle.ProfileWeb:
		if cfg.CertFile == "" || cfg.KeyFile == "" {
			return nil, errors.New("endpoint: the https_web profile needs a certificate file and a key file")
		}
		if !cfg.ID.IsZero() {
			return nil, errors.New("endpoint: a SPIFFE ID is for the https_spiffe profile")
		}
		s.certs = &fileCert{certFile: cfg.CertFile, keyFile: cfg.KeyFile, every: cfg.ReloadInterval, clock: cfg.Clock, log: cfg.Logger}
	default:
		return nil, fmt.Errorf("endpoint: profile %q: want %s or %s", cfg.Profile, bundle.ProfileSPIFFE, bundle.ProfileWeb)
	}
	s.cfg = cfg
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.serveBundle)
	s.srv = &http.Server{
		Handler:           mux,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: s.certs.get},
		ReadHeaderTimeout: requestTimeout,
		ReadTimeout:       requestTimeout,
		WriteTimeout:      requestTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	return s, nil
}

// Handler is the endpoint's HTTP handler, without TLS.
func (s *Server) Handler() http.Handler { return s.srv.Handler }

// Start gets the first serving certificate (loads the files, or issues the
// SVID) and the bundle, so that a misconfiguration fails here, then listens
// and serves in the background.
func (s *Server) Start() error {
	if _, err := s.certs.get(nil); err != nil {
		return fmt.Errorf("endpoint: serving certificate: %w", err)
	}
	if _, err := s.document(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("endpoint: %w", err)
	}
	s.ln = ln
	go func() {
		if err := s.srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.cfg.Logger.Error("bundle endpoint stopped", "err", err)
		}
	}()
	s.cfg.Logger.Info("serving the SPIFFE bundle endpoint", "addr", ln.Addr().String(), "profile", s.cfg.Profile)
	return nil
}

// Addr is the bound address, nil before Start.
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops listening and waits, until ctx ends, for requests in
// flight.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

func (s *Server) serveBundle(w http.ResponseWriter, _ *http.Request) {
	d, err := s.document()
	if err != nil {
		s.cfg.Logger.Error("bundle endpoint: no bundle to serve", "err", err)
		http.Error(w, "bundle unavailable", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(d.json)
}

// document returns the bundle as served now, built anew when the Source's
// bundle has changed since the last request.
func (s *Server) document() (*document, error) {
	pem := s.cfg.Source.RootsPEM()
	var jwt *jwtbundle.Bundle
	if js, ok := s.cfg.Source.(JWTSource); ok {
		jwt = js.JWTBundle()
	}
	same := func(d *document) bool {
		return d != nil && bytes.Equal(d.pem, pem) && (d.jwt == jwt || (d.jwt != nil && jwt != nil && d.jwt.Equal(jwt)))
	}
	if d := s.doc.Load(); same(d) {
		return d, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.doc.Load()
	if same(old) {
		return old, nil // built by another request meanwhile
	}
	roots, err := pki.ParseCertificates(pem)
	if err != nil {
		if old != nil {
			s.cfg.Logger.Error("bundle endpoint: the CA's bundle does not parse; serving the previous one", "err", err)
			return old, nil
		}
		return nil, fmt.Errorf("endpoint: bundle: %w", err)
	}
	seq := uint64(max(s.cfg.Clock.Now().Unix(), 0))
	if old != nil && seq <= old.seq {
		seq = old.seq + 1
	}
	b := spiffebundle.FromX509Authorities(s.cfg.TrustDomain, roots)
	if jwt != nil {
		b.SetJWTAuthorities(jwt.JWTAuthorities())
	}
	b.SetRefreshHint(s.cfg.RefreshHint)
	b.SetSequenceNumber(seq)
	doc, err := b.Marshal()
	if err != nil {
		return nil, fmt.Errorf("endpoint: bundle: %w", err)
	}
	d := &document{pem: bytes.Clone(pem), jwt: jwt, json: doc, seq: seq}
	s.doc.Store(d)
	s.cfg.Metrics.Sequence(seq)
	if old != nil {
		s.cfg.Logger.Info("bundle endpoint serves a new bundle", "spiffe_sequence", seq, "roots", len(roots))
	}
	return d, nil
}

package sds_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/testlog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
	"github.com/meshca/meshca/sds"
)

var (
	td         = spiffeid.RequireTrustDomainFromString("example.org")
	workloadID = spiffeid.RequireFromPath(td, "/ns/default/sa/web")
	otherID    = spiffeid.RequireFromPath(td, "/ns/default/sa/other")
	// t0 is a whole second, so certificate times (whole seconds) are exact.
	t0 = time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
)

// safety bounds every wait for the goroutine under test in wall time. It is
// a safety net only: tests synchronise on channels and never sleep.
const safety = 20 * time.Second

// leafTTL is the lifetime the tests ask for; renewal is due half-way.
const leafTTL = time.Hour

// CSRSigner is satisfied by the real client.
var _ sds.CSRSigner = (*client.Client)(nil)

func newAuthority(t *testing.T, clk *clocktest.Fake) *ca.Authority {
	t.Helper()
	a, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Store: storetest.NewMem(), Clock: clk})
	if err != nil {
		t.Fatalf("ca.New: %v", err)
	}
	return a
}

// signAs has a signs csrPEM for the attested identity id.
func signAs(ctx context.Context, a *ca.Authority, csrPEM []byte, ttl time.Duration, id spiffeid.ID) ([]string, error) {
	iss, err := a.Sign(ctx, ca.SignRequest{CSR: csrPEM, TTL: ttl, Identity: attestor.Identity{ID: id, Kind: "test", Subject: "sds-test"}})
	if err != nil {
		return nil, err
	}
	return iss.ChainPEM, nil
}

// signCSR has a sign csrPEM for id, reporting a failure with t.Error: it
// may run in the Manager's goroutine.
func signCSR(t *testing.T, a *ca.Authority, csrPEM []byte, id spiffeid.ID) []string {
	chain, err := signAs(context.Background(), a, csrPEM, leafTTL, id)
	if err != nil {
		t.Error(err)
	}
	return chain
}

// recClock is the fake clock, and it also reports each wait asked of it
// once the waiter is registered, so a test knows both that the Manager is
// waiting and for how long.
type recClock struct {
	*clocktest.Fake
	waits chan time.Duration
}

func (c *recClock) After(d time.Duration) <-chan time.Time {
	ch := c.Fake.After(d)
	c.waits <- d
	return ch
}

// call is one request the fake CA received.
type call struct {
	token    string
	ttl      time.Duration
	deadline time.Time
	csr      *x509.CertificateRequest
}

// fakeCA is a CSRSigner that signs with a real Authority, as the CA's
// server would for a caller attested as workloadID, unless told to fail or
// to answer badly.
type fakeCA struct {
	auth *ca.Authority

	mu    sync.Mutex
	calls []call
	// fail, when it returns an error, makes Sign return it.
	fail func(token string) error
	// bad, when set, rewrites the next answer and is then cleared.
	bad func(ctx context.Context, good []string) []string
	// entered, when set, is closed on the next call, which then waits for
	// its context to end.
	entered chan struct{}
}

func (f *fakeCA) Sign(ctx context.Context, csrPEM []byte, ttl time.Duration, token string) ([]string, error) {
	f.mu.Lock()
	c := call{token: token, ttl: ttl}
	c.deadline, _ = ctx.Deadline()
	if block, _ := pem.Decode(csrPEM); block != nil {
		c.csr, _ = x509.ParseCertificateRequest(block.Bytes)
	}
	f.calls = append(f.calls, c)
	fail, bad, entered := f.fail, f.bad, f.entered
	f.bad, f.entered = nil, nil
	f.mu.Unlock()

	if entered != nil {
		close(entered)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if fail != nil {
		if err := fail(token); err != nil {
			return nil, err
		}
	}
	chain, err := signAs(ctx, f.auth, csrPEM, ttl, workloadID)
	if err != nil {
		return nil, err
	}
	if bad != nil {
		chain = bad(ctx, chain)
	}
	return chain, nil
}

func (f *fakeCA) setFail(fn func(token string) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = fn
}

func (f *fakeCA) setBad(fn func(ctx context.Context, good []string) []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.bad = fn
}

func (f *fakeCA) setEntered(ch chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entered = ch
}

func (f *fakeCA) Calls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

// unavailable is a CA that cannot be reached.
func unavailable(string) error {
	return errors.New("rpc error: code = Unavailable desc = connection refused")
}

type fakeMetrics struct {
	mu       sync.Mutex
	ok, fail int
	expiry   time.Time
}

func (m *fakeMetrics) Renewed(ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ok {
		m.ok++
	} else {
		m.fail++
	}
}

func (m *fakeMetrics) Expiry(t time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expiry = t
}

func (m *fakeMetrics) get() (ok, fail int, expiry time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ok, m.fail, m.expiry
}

// env is a Manager wired to a fake CA backed by a real Authority, all on
// one fake clock.
type env struct {
	clk     *recClock
	auth    *ca.Authority
	ca      *fakeCA
	m       *sds.Manager
	metrics *fakeMetrics
	logs    *testlog.Buffer

	mu     sync.Mutex
	tokens int // Token calls
}

func newEnv(t *testing.T, mod func(*sds.Config)) *env {
	t.Helper()
	e := &env{
		clk:     &recClock{Fake: clocktest.New(t0), waits: make(chan time.Duration, 1000)},
		metrics: &fakeMetrics{},
		logs:    &testlog.Buffer{},
	}
	e.auth = newAuthority(t, e.clk.Fake)
	e.ca = &fakeCA{auth: e.auth}
	cfg := sds.Config{
		ID:  workloadID,
		CA:  e.ca,
		TTL: leafTTL,
		Token: func(context.Context) (string, error) {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.tokens++
			return fmt.Sprintf("token-%d", e.tokens), nil
		},
		Rand:    func() float64 { return 0.5 }, // no jitter: renew at exactly half, back off exactly ×2
		Clock:   e.clk,
		Logger:  slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Metrics: e.metrics,
	}
	if mod != nil {
		mod(&cfg)
	}
	m, err := sds.NewManager(cfg)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	e.m = m
	return e
}

func (e *env) tokenCalls() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.tokens
}

// run starts Run and stops it at the end of the test, checking that it
// returns promptly with the context's error.
func (e *env) run(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v, want context.Canceled", err)
			}
		case <-time.After(safety):
			t.Error("Run did not return after cancel")
		}
	})
}

// nextWait returns the duration of the Manager's next wait, once it is
// waiting.
func (e *env) nextWait(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-e.clk.waits:
		return d
	case <-time.After(safety):
		t.Fatalf("the Manager never waited; log:\n%s", e.logs.String())
		return 0
	}
}

// recv waits for a notification on ch.
func recv(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(safety):
		t.Fatal("no notification")
	}
}

// noRecv checks that no notification is pending on ch.
func noRecv(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
		t.Fatal("unexpected notification")
	default:
	}
}

// checkSVID checks that s is a valid SVID for workloadID from e's CA at now.
func (e *env) checkSVID(t *testing.T, s *sds.SVID, version uint64) {
	t.Helper()
	if s == nil {
		t.Fatal("no SVID")
	}
	if s.Version != version {
		t.Errorf("Version = %d, want %d", s.Version, version)
	}
	if s.ID != workloadID {
		t.Errorf("ID = %s, want %s", s.ID, workloadID)
	}
	if len(s.Certificates) != 2 {
		t.Fatalf("%d certificates, want leaf and intermediate", len(s.Certificates))
	}
	roots := e.auth.Bundle().X509Authorities()
	if len(s.Roots) != 1 || !s.Roots[0].Equal(roots[0]) {
		t.Errorf("Roots are not the CA's root")
	}
	id, _, err := x509svid.Verify(s.Certificates, e.auth.Bundle(), x509svid.WithTime(e.clk.Now()))
	if err != nil || id != workloadID {
		t.Errorf("SVID does not verify against the CA's bundle: %v, %s", err, id)
	}
	if pub, ok := s.Key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(s.Certificates[0].PublicKey) {
		t.Error("Key does not match the leaf")
	}
}

func TestRenewalTime(t *testing.T) {
	nb := t0
	na := t0.Add(100 * time.Hour)
	tests := []struct {
		name                string
		notBefore, notAfter time.Time
		fraction, jitter, r float64
		want                time.Time
	}{
		{name: "half, no jitter", notBefore: nb, notAfter: na, fraction: 0.5, r: 0.3, want: t0.Add(50 * time.Hour)},
		{name: "r 0.5 is the middle", notBefore: nb, notAfter: na, fraction: 0.5, jitter: 0.1, r: 0.5, want: t0.Add(50 * time.Hour)},
		{name: "r 0 is the earliest", notBefore: nb, notAfter: na, fraction: 0.5, jitter: 0.1, r: 0, want: t0.Add(40 * time.Hour)},
		{name: "r 0.75", notBefore: nb, notAfter: na, fraction: 0.5, jitter: 0.1, r: 0.75, want: t0.Add(55 * time.Hour)},
		{name: "r 1 is the latest", notBefore: nb, notAfter: na, fraction: 0.5, jitter: 0.1, r: 1, want: t0.Add(60 * time.Hour)},
		{name: "other fraction", notBefore: nb, notAfter: na, fraction: 2.0 / 3, jitter: 0, r: 0.5, want: t0.Add(200 * time.Hour / 3)},
		{name: "clamped at NotBefore", notBefore: nb, notAfter: na, fraction: 0.1, jitter: 0.5, r: 0, want: nb},
		{name: "clamped at NotAfter", notBefore: nb, notAfter: na, fraction: 0.9, jitter: 0.5, r: 1, want: na},
		{name: "empty lifetime", notBefore: nb, notAfter: nb, fraction: 0.5, jitter: 0.1, r: 0.5, want: nb},
		{name: "reversed lifetime", notBefore: na, notAfter: nb, fraction: 0.5, jitter: 0.1, r: 0.5, want: na},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := sds.RenewalTime(tt.notBefore, tt.notAfter, tt.fraction, tt.jitter, tt.r)
			if d := got.Sub(tt.want).Abs(); d > time.Microsecond {
				t.Errorf("RenewalTime = %s, want %s", got, tt.want)
			}
		})
	}

	// Any r in [0, 1) stays within fraction ± jitter of the lifetime.
	lo, hi := t0.Add(40*time.Hour), t0.Add(60*time.Hour)
	for i := range 1000 {
		r := float64(i) / 1000
		got := sds.RenewalTime(nb, na, 0.5, 0.1, r)
		if got.Before(lo) || got.After(hi) {
			t.Fatalf("r=%g: RenewalTime = %s, outside [%s, %s]", r, got, lo, hi)
		}
	}
}

func TestBackoff(t *testing.T) {
	const (
		minB = time.Second
		maxB = 5 * time.Minute
	)
	tests := []struct {
		name     string
		attempt  int
		min, max time.Duration
		r        float64
		want     time.Duration
	}{
		{name: "first", attempt: 0, min: minB, max: maxB, r: 0.5, want: time.Second},
		{name: "doubles", attempt: 1, min: minB, max: maxB, r: 0.5, want: 2 * time.Second},
		{name: "doubles again", attempt: 3, min: minB, max: maxB, r: 0.5, want: 8 * time.Second},
		{name: "last before the cap", attempt: 8, min: minB, max: maxB, r: 0.5, want: 256 * time.Second},
		{name: "capped", attempt: 9, min: minB, max: maxB, r: 0.5, want: maxB},
		{name: "no overflow", attempt: 1000, min: minB, max: maxB, r: 0.5, want: maxB},
		{name: "no overflow near the largest duration", attempt: 1000, min: time.Second, max: time.Duration(1<<63 - 1), r: 0.5, want: time.Duration(1<<63 - 1)},
		{name: "jitter down 20%", attempt: 0, min: minB, max: maxB, r: 0, want: 800 * time.Millisecond},
		{name: "jitter up 20%", attempt: 2, min: minB, max: maxB, r: 1, want: 4800 * time.Millisecond},
		{name: "jitter never passes the cap", attempt: 8, min: minB, max: maxB, r: 1, want: maxB},
		{name: "jitter below the cap", attempt: 20, min: minB, max: maxB, r: 0, want: 240 * time.Second},
		{name: "negative attempt", attempt: -3, min: minB, max: maxB, r: 0.5, want: time.Second},
		{name: "r out of range", attempt: 0, min: minB, max: maxB, r: 7, want: 1200 * time.Millisecond},
		{name: "max below min", attempt: 5, min: time.Minute, max: time.Second, r: 0.5, want: time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sds.Backoff(tt.attempt, tt.min, tt.max, tt.r); got != tt.want {
				t.Errorf("Backoff(%d, %s, %s, %g) = %s, want %s", tt.attempt, tt.min, tt.max, tt.r, got, tt.want)
			}
		})
	}

	// Waits grow, and stay within ±20 % and under the cap, for every r.
	for i := range 100 {
		r := float64(i) / 100
		prev := time.Duration(0)
		for attempt := range 64 {
			got := sds.Backoff(attempt, minB, maxB, r)
			base := min(minB<<min(attempt, 20), maxB)
			lo, hi := time.Duration(float64(base)*0.8), min(time.Duration(float64(base)*1.2), maxB)
			if got < prev || got < lo || got > hi {
				t.Fatalf("r=%g attempt %d: Backoff = %s, want in [%s, %s] and ≥ %s", r, attempt, got, lo, hi, prev)
			}
			prev = got
		}
	}
}

func TestNewManagerConfig(t *testing.T) {
	signer := &fakeCA{}
	tests := []struct {
		name    string
		mod     func(*sds.Config)
		wantErr string
	}{
		{name: "defaults", mod: func(*sds.Config) {}},
		{name: "no ID", mod: func(c *sds.Config) { c.ID = spiffeid.ID{} }, wantErr: "sds: SPIFFE ID is required"},
		{name: "no CA", mod: func(c *sds.Config) { c.CA = nil }, wantErr: "sds: CA is required"},
		{name: "unknown key type", mod: func(c *sds.Config) { c.KeyType = "dsa" }, wantErr: "sds: unknown key type"},
		{name: "RSA key type", mod: func(c *sds.Config) { c.KeyType = "RSA-3072" }},
		{name: "negative TTL", mod: func(c *sds.Config) { c.TTL = -time.Hour }, wantErr: "sds: durations must be positive"},
		{name: "negative timeout", mod: func(c *sds.Config) { c.RequestTimeout = -time.Second }, wantErr: "sds: durations must be positive"},
		{name: "min backoff over max", mod: func(c *sds.Config) { c.BackoffMin = time.Hour }, wantErr: "sds: minimum backoff 1h0m0s is over the maximum 5m0s"},
		{name: "fraction 1", mod: func(c *sds.Config) { c.RenewFraction = 1 }, wantErr: "sds: renew fraction 1 is not between 0 and 1"},
		{name: "negative fraction", mod: func(c *sds.Config) { c.RenewFraction = -0.5 }, wantErr: "not between 0 and 1"},
		{name: "jitter past NotAfter", mod: func(c *sds.Config) { c.RenewFraction = 0.95 }, wantErr: "sds: renew fraction 0.95 ± jitter 0.1 leaves (0, 1)"},
		{name: "jitter past NotBefore", mod: func(c *sds.Config) { c.Jitter = 0.5 }, wantErr: "leaves (0, 1)"},
		{name: "no jitter allows a late fraction", mod: func(c *sds.Config) { c.RenewFraction, c.Jitter = 0.95, -1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := sds.Config{ID: workloadID, CA: signer}
			tt.mod(&cfg)
			m, err := sds.NewManager(cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NewManager error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("NewManager: %v", err)
			}
			if m.Current() != nil {
				t.Error("Current before Run is not nil")
			}
		})
	}
}

func TestFirstIssuance(t *testing.T) {
	tests := []struct {
		keyType string
		check   func(crypto.PublicKey) bool
	}{
		{"", func(p crypto.PublicKey) bool { k, ok := p.(*ecdsa.PublicKey); return ok && k.Curve == elliptic.P256() }},
		{sds.KeyECDSAP384, func(p crypto.PublicKey) bool { k, ok := p.(*ecdsa.PublicKey); return ok && k.Curve == elliptic.P384() }},
		{sds.KeyRSA2048, func(p crypto.PublicKey) bool { k, ok := p.(*rsa.PublicKey); return ok && k.N.BitLen() == 2048 }},
	}
	for _, tt := range tests {
		t.Run("key "+tt.keyType, func(t *testing.T) {
			e := newEnv(t, func(c *sds.Config) { c.KeyType = tt.keyType }) // no bundle: the CA's root on first use
			if err := e.m.Ready(t0); err == nil || err.Error() != "sds: no SVID yet" {
				t.Errorf("Ready before the first SVID = %v", err)
			}
			if _, err := e.m.TLSCertificate(); err == nil {
				t.Error("TLSCertificate before the first SVID: no error")
			}
			ch, cancel := e.m.Subscribe()
			defer cancel()
			e.run(t)

			recv(t, ch)
			if got, want := e.nextWait(t), leafTTL/2; got != want {
				t.Errorf("renewal wait = %s, want %s", got, want)
			}
			noRecv(t, ch)
			s := e.m.Current()
			e.checkSVID(t, s, 1)
			if !tt.check(s.Key.Public()) {
				t.Errorf("key is a %T, want %q", s.Key.Public(), tt.keyType)
			}
			if want := t0.Add(leafTTL); !s.NotAfter().Equal(want) {
				t.Errorf("NotAfter = %s, want %s", s.NotAfter(), want)
			}
			if got := e.m.Roots(); !got[0].Equal(e.auth.Bundle().X509Authorities()[0]) {
				t.Error("Roots were not refreshed from the CA's response")
			}

			calls := e.ca.Calls()
			if len(calls) != 1 {
				t.Fatalf("%d calls to the CA, want 1", len(calls))
			}
			c := calls[0]
			if c.token != "token-1" || c.ttl != leafTTL {
				t.Errorf("call: token %q ttl %s, want token-1 and %s", c.token, c.ttl, leafTTL)
			}
			if c.deadline.IsZero() || time.Until(c.deadline) > sds.DefaultRequestTimeout {
				t.Errorf("call deadline %v, want within %s", c.deadline, sds.DefaultRequestTimeout)
			}
			if c.csr == nil {
				t.Fatal("the CA received no CSR")
			}
			if len(c.csr.URIs) != 1 || c.csr.URIs[0].String() != workloadID.String() ||
				len(c.csr.DNSNames)+len(c.csr.IPAddresses)+len(c.csr.EmailAddresses) != 0 {
				t.Errorf("CSR SANs: %v %v %v %v, want exactly the URI %s", c.csr.URIs, c.csr.DNSNames, c.csr.IPAddresses, c.csr.EmailAddresses, workloadID)
			}

			if err := e.m.Ready(t0); err != nil {
				t.Errorf("Ready: %v", err)
			}
			cert, err := e.m.TLSCertificate()
			if err != nil {
				t.Fatalf("TLSCertificate: %v", err)
			}
			if len(cert.Certificate) != 2 || !bytes.Equal(cert.Certificate[0], s.Certificates[0].Raw) ||
				!bytes.Equal(cert.Certificate[1], s.Certificates[1].Raw) || cert.PrivateKey != s.Key || cert.Leaf != s.Certificates[0] {
				t.Error("TLSCertificate is not the current SVID")
			}
			if ok, fail, expiry := e.metrics.get(); ok != 1 || fail != 0 || !expiry.Equal(s.NotAfter()) {
				t.Errorf("metrics: %d ok, %d failed, expiry %s", ok, fail, expiry)
			}
		})
	}
}

func TestRenewal(t *testing.T) {
	for _, reuse := range []bool{false, true} {
		t.Run(fmt.Sprintf("ReuseKey=%v", reuse), func(t *testing.T) {
			e := newEnv(t, func(c *sds.Config) { c.ReuseKey = reuse })
			ch, cancel := e.m.Subscribe()
			defer cancel()
			e.run(t)
			recv(t, ch)
			wait := e.nextWait(t)
			v1 := e.m.Current()

			// Just before the renewal time nothing happens: the wait has
			// not fired (Advance fires due waits synchronously).
			e.clk.Advance(wait - time.Nanosecond)
			if n := e.clk.Waiters(); n != 1 {
				t.Fatalf("%d waiters just before the renewal time, want 1", n)
			}
			if n := len(e.ca.Calls()); n != 1 {
				t.Fatalf("%d calls before the renewal time, want 1", n)
			}
			noRecv(t, ch)

			e.clk.Advance(time.Nanosecond)
			recv(t, ch)
			if got, want := e.nextWait(t), leafTTL/2; got != want {
				t.Errorf("next renewal wait = %s, want %s", got, want)
			}
			noRecv(t, ch) // notified once
			v2 := e.m.Current()
			e.checkSVID(t, v2, 2)
			if v2.Certificates[0].SerialNumber.Cmp(v1.Certificates[0].SerialNumber) == 0 {
				t.Error("renewal returned the same certificate")
			}
			if sameKey := v2.Key == v1.Key; sameKey != reuse {
				t.Errorf("renewal reused the key: %v, want %v", sameKey, reuse)
			}
			if want := e.clk.Now().Add(leafTTL); !v2.NotAfter().Equal(want) {
				t.Errorf("v2 NotAfter = %s, want %s", v2.NotAfter(), want)
			}
			calls := e.ca.Calls()
			if len(calls) != 2 || calls[1].token != "token-2" {
				t.Errorf("calls %d, second token %q; want 2 calls, a fresh token-2", len(calls), calls[len(calls)-1].token)
			}
			if ok, fail, expiry := e.metrics.get(); ok != 2 || fail != 0 || !expiry.Equal(v2.NotAfter()) {
				t.Errorf("metrics: %d ok, %d failed, expiry %s", ok, fail, expiry)
			}
		})
	}
}

func TestJitter(t *testing.T) {
	tests := []struct {
		name   string
		jitter float64
		r      float64
		want   time.Duration
	}{
		{name: "earliest", r: 0, want: 24 * time.Minute},
		{name: "middle", r: 0.5, want: 30 * time.Minute},
		{name: "latest", r: 0.999, want: 36*time.Minute - time.Duration(0.001*0.2*float64(time.Hour))},
		{name: "wider jitter", jitter: 0.3, r: 0, want: 12 * time.Minute},
		{name: "jitter off", jitter: -1, r: 0, want: 30 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *sds.Config) { c.Jitter = tt.jitter; c.Rand = func() float64 { return tt.r } })
			e.run(t)
			if got := e.nextWait(t); (got - tt.want).Abs() > time.Millisecond {
				t.Errorf("renewal wait = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestRenewWithSVID(t *testing.T) {
	e := newEnv(t, func(c *sds.Config) { c.RenewWithSVID = true })
	ch, cancel := e.m.Subscribe()
	defer cancel()
	e.run(t)

	// The first request has no SVID to use: it carries the token.
	recv(t, ch)
	wait := e.nextWait(t)
	v1 := e.m.Current()
	for name, hook := range map[string]func() (*tls.Certificate, error){"TLSCertificate": e.m.TLSCertificate, "ClientCertificate": e.m.ClientCertificate} {
		if c, err := hook(); err != nil || c.Leaf != v1.Certificates[0] {
			t.Errorf("%s is not v1: %v", name, err)
		}
	}

	// The renewal goes over mTLS: no token, and the token is not read.
	e.clk.Advance(wait)
	recv(t, ch)
	wait = e.nextWait(t)
	v2 := e.m.Current()
	e.checkSVID(t, v2, 2)
	if c, err := e.m.TLSCertificate(); err != nil || c.Leaf != v2.Certificates[0] || c.PrivateKey != v2.Key {
		t.Errorf("TLSCertificate is not v2: %v", err)
	}
	calls := e.ca.Calls()
	if len(calls) != 2 || calls[0].token != "token-1" || calls[1].token != "" || e.tokenCalls() != 1 {
		t.Fatalf("tokens sent %+v, token read %d times; want token-1 then none", calls, e.tokenCalls())
	}

	// A CA that stops accepting the SVID (a new root, a revoked serial):
	// after one failed mTLS renewal the next attempt uses the token.
	e.ca.setFail(func(token string) error {
		if token == "" {
			return errors.New("rpc error: code = Unauthenticated desc = certificate does not verify")
		}
		return nil
	})
	e.clk.Advance(wait)
	if got := e.nextWait(t); got != sds.DefaultBackoffMin {
		t.Fatalf("wait after a failed renewal = %s, want %s", got, sds.DefaultBackoffMin)
	}
	e.clk.Advance(sds.DefaultBackoffMin)
	recv(t, ch)
	wait = e.nextWait(t)
	e.checkSVID(t, e.m.Current(), 3)
	calls = e.ca.Calls()
	if len(calls) != 4 || calls[2].token != "" || calls[3].token != "token-2" {
		t.Fatalf("tokens sent %+v, want none then token-2", calls)
	}

	// An expired SVID cannot authenticate: the token is used. The CA is
	// down: the renewal over mTLS fails, then the one with the token, so
	// the next would go over mTLS again, were the SVID still valid.
	e.ca.setFail(unavailable)
	e.clk.Advance(wait)
	e.clk.Advance(e.nextWait(t))
	if got := e.nextWait(t); got != 2*sds.DefaultBackoffMin {
		t.Fatalf("second backoff = %s", got)
	}
	e.clk.Advance(2 * leafTTL)
	if got := e.nextWait(t); got != 4*sds.DefaultBackoffMin {
		t.Fatalf("third backoff = %s", got)
	}
	if c, err := e.m.ClientCertificate(); err != nil || len(c.Certificate) != 0 {
		t.Errorf("ClientCertificate with an expired SVID = %d certificates, %v; want an empty one", len(c.Certificate), err)
	}
	calls = e.ca.Calls()[4:]
	if len(calls) != 3 || calls[0].token != "" || calls[1].token != "token-3" || calls[2].token != "token-4" {
		t.Errorf("tokens sent %+v; want none (mTLS), token-3 (fallback), token-4 (expired)", calls)
	}
}

// TestClientCertificateHandshake shows why the CA client's hook is
// ClientCertificate and not TLSCertificate: the CA requests a client
// certificate on every connection, and an error from the hook fails the
// handshake, so the first, token-authenticated request could never be made.
func TestClientCertificateHandshake(t *testing.T) {
	e := newEnv(t, nil)
	serving, err := e.auth.IssueServing([]string{"ca.example.org"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(e.auth.Bundle().X509Authorities()[0])

	// handshake returns the client certificates the CA's side saw.
	handshake := func(hook func() (*tls.Certificate, error)) ([]*x509.Certificate, error) {
		cc, sc := net.Pipe()
		defer cc.Close()
		defer sc.Close()
		srv := tls.Server(sc, &tls.Config{Certificates: []tls.Certificate{*serving}, ClientAuth: tls.RequestClientCert, Time: e.clk.Now})
		cli := tls.Client(cc, &tls.Config{RootCAs: roots, ServerName: "ca.example.org", Time: e.clk.Now,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return hook() }})
		srvErr := make(chan error, 1)
		go func() { srvErr <- srv.HandshakeContext(context.Background()) }()
		cliErr := cli.HandshakeContext(context.Background())
		if cliErr != nil {
			cc.Close() // unblock the server
		}
		if err := <-srvErr; cliErr == nil && err != nil {
			return nil, err
		}
		return srv.ConnectionState().PeerCertificates, cliErr
	}

	if _, err := handshake(e.m.TLSCertificate); err == nil {
		t.Error("handshake with TLSCertificate before the first SVID succeeded; the test no longer shows the point")
	}
	if peer, err := handshake(e.m.ClientCertificate); err != nil || len(peer) != 0 {
		t.Fatalf("handshake with ClientCertificate before the first SVID: %v, %d certificates", err, len(peer))
	}

	ch, cancel := e.m.Subscribe()
	defer cancel()
	e.run(t)
	recv(t, ch)
	peer, err := handshake(e.m.ClientCertificate)
	if err != nil || len(peer) != 2 {
		t.Fatalf("handshake with the SVID: %v, %d certificates", err, len(peer))
	}
	if id, err := x509svid.IDFromCert(peer[0]); err != nil || id != workloadID {
		t.Errorf("CA saw %s, %v; want %s", id, err, workloadID)
	}
}

func TestOutage(t *testing.T) {
	e := newEnv(t, nil)
	ch, cancel := e.m.Subscribe()
	defer cancel()
	e.run(t)
	recv(t, ch)
	wait := e.nextWait(t)
	v1 := e.m.Current()

	e.ca.setFail(unavailable)
	e.clk.Advance(wait) // the renewal is due, and fails

	// Waits double from 1s to the 5m cap; each is followed by exactly one
	// attempt (calls counts them), and nothing happens without a wait.
	attempts, failed, sawExpiry := 2, 0, false
	for backoff := sds.DefaultBackoffMin; ; backoff = min(2*backoff, sds.DefaultBackoffMax) {
		// While the SVID is valid the wait is also capped at half the
		// time it has left, so an attempt falls just before expiry.
		want := backoff
		if left := v1.NotAfter().Sub(e.clk.Now()); left > 0 {
			want = min(want, max(left/2, sds.DefaultBackoffMin))
		}
		got := e.nextWait(t)
		failed++
		if got != want {
			t.Fatalf("wait after failure %d = %s, want %s", failed, got, want)
		}
		if n := len(e.ca.Calls()); n != attempts {
			t.Fatalf("%d calls to the CA after %d attempts: a retry without a wait", n, attempts)
		}
		if e.m.Current() != v1 {
			t.Fatal("the SVID was dropped during the outage")
		}
		now := e.clk.Now()
		ready := e.m.Ready(now)
		if expired := !now.Before(v1.NotAfter()); expired {
			if ready == nil {
				t.Fatalf("Ready at %s, after expiry at %s", now, v1.NotAfter())
			}
			if c, err := e.m.TLSCertificate(); err != nil || c.Leaf != v1.Certificates[0] {
				t.Errorf("TLSCertificate after expiry: %v", err)
			}
			if !sawExpiry {
				// Keep failing for one more wait after expiry, then recover.
				sawExpiry = true
			} else {
				e.ca.setFail(nil)
				e.clk.Advance(got)
				break
			}
		} else if ready != nil {
			t.Fatalf("not Ready at %s with a valid SVID: %v", now, ready)
		}
		e.clk.Advance(got)
		attempts++
	}
	// The doubling ladder, the halving towards expiry and the 5m cap
	// after it: a bounded number of attempts, never a burst.
	if failed < 16 || failed > 30 {
		t.Errorf("%d failures before recovery, want 16 to 30", failed)
	}

	recv(t, ch)
	// The CA's NotAfter has whole seconds: the wait may be short of half
	// the lifetime by the fraction of a second recovery happened at.
	if got, want := e.nextWait(t), leafTTL/2; got > want || got < want-time.Second {
		t.Errorf("renewal wait after recovery = %s, want %s", got, want)
	}
	v2 := e.m.Current()
	e.checkSVID(t, v2, 2)
	if err := e.m.Ready(e.clk.Now()); err != nil {
		t.Errorf("not Ready after recovery: %v", err)
	}
	if ok, fail, expiry := e.metrics.get(); ok != 2 || fail != failed || !expiry.Equal(v2.NotAfter()) {
		t.Errorf("metrics: %d ok, %d failed, expiry %s; want 2, %d, %s", ok, fail, expiry, failed, v2.NotAfter())
	}
	logs := e.logs.String()
	for _, want := range []string{"keeping the current SVID", "no valid SVID", "connection refused"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

func TestBadResponses(t *testing.T) {
	// other signs with an unrelated CA on the same clock, and expired with
	// one whose clock is two hours behind.
	other := newAuthority(t, clocktest.New(t0))
	past := newAuthority(t, clocktest.New(t0.Add(-2*leafTTL)))
	// The bad answers are made in the Manager's goroutine (inside Sign):
	// failures are reported with t.Error, not t.Fatal.
	sign := func(t *testing.T, a *ca.Authority, id spiffeid.ID) []string {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Error(err)
			return nil
		}
		csr, err := client.NewCSR(key, id)
		if err != nil {
			t.Error(err)
			return nil
		}
		return signCSR(t, a, csr, id)
	}

	tests := []struct {
		name    string
		bad     func(t *testing.T, e *env, good []string) []string
		wantErr string
	}{
		{
			name:    "empty chain",
			bad:     func(*testing.T, *env, []string) []string { return nil },
			wantErr: "CA returned an empty chain",
		},
		{
			name: "garbage PEM",
			bad: func(_ *testing.T, _ *env, good []string) []string {
				return []string{"-----BEGIN garbage", good[1], good[2]}
			},
			wantErr: "element 0: not PEM",
		},
		{
			name: "not a certificate",
			bad: func(_ *testing.T, _ *env, good []string) []string {
				return []string{string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})), good[1], good[2]}
			},
			wantErr: `element 0: PEM block is \"PRIVATE KEY\"`,
		},
		{
			name: "corrupt certificate",
			bad: func(_ *testing.T, _ *env, good []string) []string {
				return []string{good[0], string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})), good[2]}
			},
			wantErr: "element 1: x509: malformed certificate",
		},
		{
			name:    "two certificates in one element",
			bad:     func(_ *testing.T, _ *env, good []string) []string { return []string{good[0] + good[1], good[2]} },
			wantErr: "element 0: trailing data after the certificate",
		},
		{
			name:    "leaf only",
			bad:     func(_ *testing.T, _ *env, good []string) []string { return good[:1] },
			wantErr: "CA returned no root",
		},
		{
			name: "too long",
			bad: func(_ *testing.T, _ *env, good []string) []string {
				long := []string{good[0]}
				for range 20 {
					long = append(long, good[1])
				}
				return append(long, good[2])
			},
			wantErr: "CA returned 22 certificates, over the limit of 16",
		},
		{
			name:    "another SPIFFE ID",
			bad:     func(t *testing.T, e *env, _ []string) []string { return sign(t, e.auth, otherID) },
			wantErr: "CA returned an SVID for spiffe://example.org/ns/default/sa/other, want spiffe://example.org/ns/default/sa/web",
		},
		{
			name:    "another key",
			bad:     func(t *testing.T, e *env, _ []string) []string { return sign(t, e.auth, workloadID) },
			wantErr: "CA returned a leaf for another key than the CSR's",
		},
		{
			name: "root of another CA",
			bad: func(t *testing.T, _ *env, good []string) []string {
				return []string{good[0], good[1], sign(t, other, workloadID)[2]}
			},
			wantErr: "does not verify to its root",
		},
		{
			name:    "intermediate missing",
			bad:     func(_ *testing.T, _ *env, good []string) []string { return []string{good[0], good[2]} },
			wantErr: "does not verify to its root",
		},
		{
			name: "expired",
			bad: func(t *testing.T, e *env, _ []string) []string {
				// Our CSR, signed by a CA whose clock is behind: the chain
				// is consistent but expired at the Manager's time.
				calls := e.ca.Calls()
				csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: calls[len(calls)-1].csr.Raw})
				return signCSR(t, past, csr, workloadID)
			},
			wantErr: "certificate has expired or is not yet valid",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.ca.setBad(func(_ context.Context, good []string) []string { return tt.bad(t, e, good) })
			ch, cancel := e.m.Subscribe()
			defer cancel()
			e.run(t)

			// Refused: nothing published, retried after the backoff.
			if got := e.nextWait(t); got != sds.DefaultBackoffMin {
				t.Fatalf("wait after a bad response = %s, want %s", got, sds.DefaultBackoffMin)
			}
			if e.m.Current() != nil {
				t.Fatal("a bad response was published")
			}
			noRecv(t, ch)
			if logs := e.logs.String(); !strings.Contains(logs, tt.wantErr) {
				t.Errorf("log lacks %q:\n%s", tt.wantErr, logs)
			}

			e.clk.Advance(sds.DefaultBackoffMin)
			recv(t, ch)
			e.nextWait(t)
			e.checkSVID(t, e.m.Current(), 1)
			if ok, fail, _ := e.metrics.get(); ok != 1 || fail != 1 {
				t.Errorf("metrics: %d ok, %d failed; want 1, 1", ok, fail)
			}
		})
	}
}

func TestTokenError(t *testing.T) {
	reads := 0
	e := newEnv(t, func(c *sds.Config) {
		c.Token = func(context.Context) (string, error) {
			reads++ // only Run's goroutine calls it
			if reads == 1 {
				return "", errors.New("open /var/run/secrets/tokens/meshca: no such file or directory")
			}
			return "fresh", nil
		}
	})
	ch, cancel := e.m.Subscribe()
	defer cancel()
	e.run(t)
	if got := e.nextWait(t); got != sds.DefaultBackoffMin {
		t.Fatalf("wait after a token error = %s", got)
	}
	if n := len(e.ca.Calls()); n != 0 {
		t.Errorf("%d calls to the CA without a token", n)
	}
	if logs := e.logs.String(); !strings.Contains(logs, "sds: read token: open /var/run/secrets/tokens/meshca") {
		t.Errorf("log lacks the token error:\n%s", logs)
	}
	e.clk.Advance(sds.DefaultBackoffMin)
	recv(t, ch)
	if calls := e.ca.Calls(); len(calls) != 1 || calls[0].token != "fresh" {
		t.Errorf("calls %+v, want one with the fresh token", calls)
	}
}

func TestRunStops(t *testing.T) {
	tests := []struct {
		name      string
		state     string // where Run is when cancelled
		caDown    bool
		wantCalls int
	}{
		{name: "before the first request", state: "start"},
		{name: "waiting for the renewal", state: "waiting", wantCalls: 1},
		{name: "waiting after a failure", state: "waiting", caDown: true, wantCalls: 1},
		{name: "inside the CA request", state: "request", wantCalls: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil)
			entered := make(chan struct{})
			if tt.caDown {
				e.ca.setFail(unavailable)
			}
			if tt.state == "request" {
				e.ca.setEntered(entered)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.state == "start" {
				cancel()
			}
			done := make(chan error, 1)
			go func() { done <- e.m.Run(ctx) }()
			switch tt.state {
			case "waiting":
				e.nextWait(t)
			case "request":
				recv(t, entered)
			}
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Run = %v, want context.Canceled", err)
				}
			case <-time.After(safety):
				t.Fatal("Run did not return after cancel")
			}
			if n := len(e.ca.Calls()); n != tt.wantCalls {
				t.Errorf("%d calls to the CA, want %d", n, tt.wantCalls)
			}
			wantFail := 0
			if tt.caDown {
				wantFail = 1
			}
			if _, fail, _ := e.metrics.get(); fail != wantFail {
				t.Errorf("%d failures counted, want %d (a cancelled request is not a failure)", fail, wantFail)
			}
		})
	}
}

func TestRunTwice(t *testing.T) {
	e := newEnv(t, nil)
	e.run(t)
	e.nextWait(t)
	if err := e.m.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second Run = %v, want an error", err)
	}
}

func TestReady(t *testing.T) {
	e := newEnv(t, nil)
	ch, cancel := e.m.Subscribe()
	defer cancel()
	e.run(t)
	recv(t, ch)
	s := e.m.Current()
	tests := []struct {
		name    string
		now     time.Time
		wantErr string
	}{
		{name: "issued", now: t0},
		{name: "just before expiry", now: s.NotAfter().Add(-time.Nanosecond)},
		{name: "at expiry", now: s.NotAfter(), wantErr: "sds: SVID expired at 2026-11-01T13:00:00Z"},
		{name: "after expiry", now: s.NotAfter().Add(time.Hour), wantErr: "sds: SVID expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := e.m.Ready(tt.now)
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("Ready = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Ready = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestTrustBundleAnchorsTheChain: the CA's chain must end at a root of the
// configured bundle (a CA answering with another root is refused), and the
// whole bundle, re-read before each request, is what gets served.
func TestTrustBundleAnchorsTheChain(t *testing.T) {
	other := newAuthority(t, clocktest.New(t0)).Bundle().X509Authorities()
	t.Run("root outside the bundle", func(t *testing.T) {
		e := newEnv(t, func(c *sds.Config) { c.Roots = other })
		e.run(t)
		if got := e.nextWait(t); got != sds.DefaultBackoffMin {
			t.Fatalf("wait %s after a chain to an unknown root, want the backoff", got)
		}
		if e.m.Current() != nil {
			t.Fatal("an SVID chaining to a root outside the bundle was served")
		}
	})
	t.Run("bundle re-read and served whole", func(t *testing.T) {
		var e *env
		e = newEnv(t, func(c *sds.Config) {
			c.LoadRoots = func() ([]*x509.Certificate, error) {
				return append(append([]*x509.Certificate{}, other...), e.auth.Bundle().X509Authorities()...), nil
			}
		})
		ch, cancel := e.m.Subscribe()
		defer cancel()
		e.run(t)
		recv(t, ch)
		if got := e.m.Current().Roots; len(got) != 2 {
			t.Fatalf("served %d roots, want both of the bundle", len(got))
		}
	})
}

// shedWith is a CA that sheds every call with a retry hint of d.
func shedWith(d time.Duration) func(string) error {
	return func(string) error {
		st, err := status.New(codes.ResourceExhausted, "CA overloaded").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
		if err != nil {
			panic(err)
		}
		return st.Err()
	}
}

// TestRetryHint: a CA that sheds the first request with a retry hint is
// asked again after the hint plus jitter (r = 0.5: half of the lesser of
// half the hint and a second), not after the exponential backoff; a hint
// under BackoffMin waits BackoffMin.
func TestRetryHint(t *testing.T) {
	for _, tc := range []struct {
		name string
		hint time.Duration
		want time.Duration
	}{
		{"hint over the backoff", 8 * time.Second, 8500 * time.Millisecond},
		{"short hint", 1200 * time.Millisecond, 1500 * time.Millisecond},
		{"hint under BackoffMin", 300 * time.Millisecond, sds.DefaultBackoffMin},
		{"hint capped by the client", time.Hour, 5*time.Minute + 500*time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			e.ca.setFail(shedWith(tc.hint))
			ch, cancel := e.m.Subscribe()
			defer cancel()
			e.run(t)
			if got := e.nextWait(t); got != tc.want {
				t.Fatalf("wait after a shed request = %s, want %s", got, tc.want)
			}
			e.ca.setFail(nil)
			e.clk.Advance(tc.want)
			recv(t, ch)
		})
	}
}

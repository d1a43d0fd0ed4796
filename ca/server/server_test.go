package server_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jointoken"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/ca/server"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/boltstore"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/metrics"
)

var (
	td         = spiffeid.RequireTrustDomainFromString("example.org")
	fooID      = spiffeid.RequireFromPath(td, "/ns/foo/sa/bar")
	otherID    = spiffeid.RequireFromPath(td, "/ns/foo/sa/other")
	fooToken   = "token-for-foo"
	adminToken = "admin-secret"
)

// plane is a CA with its servers on 127.0.0.1, backed by a real bbolt file.
type plane struct {
	path  string
	store *boltstore.Store
	auth  *ca.Authority
	srv   *server.Server
	// renewClock is the mTLS attestor's clock, so a test can make a
	// presented certificate look expired without touching the server's
	// own TLS certificate.
	renewClock *clocktest.Fake
}

// startPlane starts a plane whose attestor chain is mTLS renewal, join
// tokens, the given extra attestors, and the static test token.
func startPlane(t testing.TB, path string, extra ...attestor.Attestor) *plane {
	t.Helper()
	return startPlaneWith(t, path, nil, extra...)
}

// startPlaneWith is startPlane with tune, if not nil, changing the
// server's Config before it starts.
func startPlaneWith(t testing.TB, path string, tune func(*server.Config), extra ...attestor.Attestor) *plane {
	t.Helper()
	st, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	auth, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Store: st, Metrics: metrics.NewCA(reg)})
	if err != nil {
		t.Fatal(err)
	}
	renewClock := clocktest.New(time.Now())
	renewal, err := attestor.NewMTLS(attestor.MTLSConfig{Bundles: auth, Revocations: auth, Clock: renewClock})
	if err != nil {
		t.Fatal(err)
	}
	joins, err := jointoken.New(jointoken.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{
		Authority:   auth,
		Attestor:    append(append(attestor.Chain{renewal, joins}, extra...), attestor.NewStaticTokens(map[string]spiffeid.ID{fooToken: fooID})),
		AdminToken:  adminToken,
		GRPCAddr:    "127.0.0.1:0",
		HTTPSAddr:   "127.0.0.1:0",
		MonitorAddr: "127.0.0.1:0",
		Clock:       clock.Real{},
		Registry:    reg,
	}
	if tune != nil {
		tune(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	p := &plane{path: path, store: st, auth: auth, srv: srv, renewClock: renewClock}
	t.Cleanup(p.stop)
	return p
}

func (p *plane) stop() {
	if p.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.srv.Shutdown(ctx)
	p.store.Close()
	p.srv = nil
}

func (p *plane) roots() *x509.CertPool {
	pool := x509.NewCertPool()
	for _, r := range p.auth.Bundle().X509Authorities() {
		pool.AddCert(r)
	}
	return pool
}

func (p *plane) records(t *testing.T) []store.IssuanceWithRevocations {
	t.Helper()
	recs, err := p.store.Issuances(context.Background(), store.IssuanceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func newKey(t testing.TB) crypto.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csrFor(t testing.TB, key crypto.Signer, id spiffeid.ID) []byte {
	b, err := client.NewCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func grpcClient(t testing.TB, p *plane, cert *tls.Certificate) *client.Client {
	t.Helper()
	cfg := client.Config{Addr: p.srv.Addr("grpc").String(), Roots: p.roots(), ServerName: "localhost"}
	if cert != nil {
		cfg.ClientCertificate = func() (*tls.Certificate, error) { return cert, nil }
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func parseChain(t *testing.T, chain []string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, s := range chain {
		b, _ := pem.Decode([]byte(s))
		if b == nil {
			t.Fatalf("chain entry is not PEM: %q", s)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// svid turns a chain and key into a TLS client certificate (leaf and
// intermediates; the root stays out).
func svid(chain []*x509.Certificate, key crypto.Signer) *tls.Certificate {
	c := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain[:len(chain)-1] {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

func TestGRPCIssueAndVerify(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	c := grpcClient(t, p, nil)
	chainPEM, err := c.Sign(context.Background(), csrFor(t, newKey(t), fooID), 0, fooToken)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	chain := parseChain(t, chainPEM)
	if len(chain) != 3 || !chain[2].Equal(p.auth.Bundle().X509Authorities()[0]) {
		t.Fatal("chain is not leaf first, root last")
	}
	id, _, err := x509svid.Verify(chain[:len(chain)-1], p.auth.Bundle())
	if err != nil || id != fooID {
		t.Fatalf("x509svid.Verify = %s, %v", id, err)
	}
	if d := chain[0].NotAfter.Sub(chain[0].NotBefore); d != ca.DefaultLeafTTL+ca.DefaultBackdate {
		t.Errorf("lifetime %s", d)
	}
	recs := p.records(t)
	if len(recs) != 1 || recs[0].Serial != chain[0].SerialNumber.Text(16) || recs[0].CredentialKind != attestor.KindDevToken || !strings.HasPrefix(recs[0].Peer, "127.0.0.1:") {
		t.Fatalf("issuance log %+v", recs)
	}
	// Requested validity in seconds is honoured.
	chainPEM, err = c.Sign(context.Background(), csrFor(t, newKey(t), fooID), time.Hour, fooToken)
	if err != nil {
		t.Fatal(err)
	}
	if leaf := parseChain(t, chainPEM)[0]; leaf.NotAfter.Sub(leaf.NotBefore) != time.Hour+ca.DefaultBackdate {
		t.Errorf("requested 1h, got %s", leaf.NotAfter.Sub(leaf.NotBefore))
	}
}

// TestRestartKeepsRootAndLog restarts the whole plane on the same data file.
func TestRestartKeepsRootAndLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshca.db")
	p1 := startPlane(t, path)
	chainPEM, err := grpcClient(t, p1, nil).Sign(context.Background(), csrFor(t, newKey(t), fooID), 0, fooToken)
	if err != nil {
		t.Fatal(err)
	}
	root1 := p1.auth.Bundle().X509Authorities()[0]
	serial := parseChain(t, chainPEM)[0].SerialNumber.Text(16)
	p1.stop()

	p2 := startPlane(t, path)
	if !p2.auth.Bundle().X509Authorities()[0].Equal(root1) {
		t.Fatal("root changed across restart")
	}
	if _, err := p2.store.Issuance(context.Background(), serial); err != nil {
		t.Fatalf("issuance record lost across restart: %v", err)
	}
	// The certificate from before the restart still verifies, and renews.
	chain := parseChain(t, chainPEM)
	if _, _, err := x509svid.Verify(chain[:2], p2.auth.Bundle()); err != nil {
		t.Fatalf("old SVID does not verify after restart: %v", err)
	}
}

func TestGRPCRenewWithMTLS(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	ctx := context.Background()
	key := newKey(t)
	chainPEM, err := grpcClient(t, p, nil).Sign(ctx, csrFor(t, key, fooID), 0, fooToken)
	if err != nil {
		t.Fatal(err)
	}
	current := svid(parseChain(t, chainPEM), key)

	renewer := grpcClient(t, p, current)
	newKey := newKey(t)
	renewed, err := renewer.Sign(ctx, csrFor(t, newKey, fooID), 0, "")
	if err != nil {
		t.Fatalf("renewal: %v", err)
	}
	leaf := parseChain(t, renewed)[0]
	rec, err := p.store.Issuance(ctx, leaf.SerialNumber.Text(16))
	if err != nil {
		t.Fatal(err)
	}
	if rec.CredentialKind != attestor.KindMTLS || rec.Requester != "serial:"+current.Leaf.SerialNumber.Text(16) {
		t.Errorf("renewal recorded as %q by %q", rec.CredentialKind, rec.Requester)
	}
	// A renewal may not switch identity.
	_, err = renewer.Sign(ctx, csrFor(t, newKey, otherID), 0, "")
	wantCode(t, err, codes.PermissionDenied, "credential proves spiffe://example.org/ns/foo/sa/bar")
}

func TestGRPCRenewalRefused(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		setup func(t *testing.T, p *plane, leaf *x509.Certificate)
		code  codes.Code
		msg   string
	}{
		{"revoked serial", func(t *testing.T, p *plane, leaf *x509.Certificate) {
			if _, err := p.auth.Revoke(ctx, store.Revocation{Serial: leaf.SerialNumber.Text(16), Reason: "test"}); err != nil {
				t.Fatal(err)
			}
		}, codes.PermissionDenied, "is revoked"},
		{"revoked identity", func(t *testing.T, p *plane, leaf *x509.Certificate) {
			if _, err := p.auth.Revoke(ctx, store.Revocation{SPIFFEID: fooID.String(), Reason: "test"}); err != nil {
				t.Fatal(err)
			}
		}, codes.PermissionDenied, "is revoked"},
		{"expired", func(t *testing.T, p *plane, leaf *x509.Certificate) {
			p.renewClock.Set(leaf.NotAfter.Add(time.Second))
		}, codes.Unauthenticated, "client certificate expired at"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
			key := newKey(t)
			chainPEM, err := grpcClient(t, p, nil).Sign(ctx, csrFor(t, key, fooID), 0, fooToken)
			if err != nil {
				t.Fatal(err)
			}
			current := svid(parseChain(t, chainPEM), key)
			tc.setup(t, p, current.Leaf)
			before := len(p.records(t))
			_, err = grpcClient(t, p, current).Sign(ctx, csrFor(t, newKey(t), fooID), 0, "")
			wantCode(t, err, tc.code, tc.msg)
			if after := len(p.records(t)); after != before {
				t.Errorf("refused renewal recorded %d certificates", after-before)
			}
		})
	}
}

// TestGRPCRenewalWithForeignCertificate: a certificate from another CA with
// the right SPIFFE ID is refused.
func TestGRPCRenewalWithForeignCertificate(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	other := startPlane(t, filepath.Join(t.TempDir(), "other.db"))
	key := newKey(t)
	chainPEM, err := grpcClient(t, other, nil).Sign(context.Background(), csrFor(t, key, fooID), 0, fooToken)
	if err != nil {
		t.Fatal(err)
	}
	_, err = grpcClient(t, p, svid(parseChain(t, chainPEM), key)).Sign(context.Background(), csrFor(t, newKey(t), fooID), 0, "")
	wantCode(t, err, codes.Unauthenticated, "not a valid SVID")
}

func wantCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		t.Fatalf("error %v, want code %s", err, code)
	}
	if !strings.Contains(st.Message(), msg) {
		t.Fatalf("message %q does not say %q", st.Message(), msg)
	}
}

// rawCall sends a hand-made request with optional metadata.
func rawCall(t *testing.T, p *plane, req *pb.IstioCertificateRequest, md ...string) error {
	t.Helper()
	conn, err := grpc.NewClient(p.srv.Addr("grpc").String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: p.roots(), ServerName: "localhost"})),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if len(md) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
	}
	_, err = pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, req)
	return err
}

func TestGRPCRefusesBadRequests(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	key := newKey(t)
	good := string(csrFor(t, key, fooID))
	bearer := []string{"authorization", "Bearer " + fooToken}
	tests := []struct {
		name string
		req  *pb.IstioCertificateRequest
		md   []string
		code codes.Code
		msg  string
	}{
		{"no credential", &pb.IstioCertificateRequest{Csr: good}, nil, codes.Unauthenticated, "no credential"},
		{"unknown token", &pb.IstioCertificateRequest{Csr: good}, []string{"authorization", "Bearer nope"}, codes.Unauthenticated, "unknown bearer token"},
		{"not a bearer header", &pb.IstioCertificateRequest{Csr: good}, []string{"authorization", "Basic abc"}, codes.Unauthenticated, `"Bearer <token>"`},
		{"empty bearer", &pb.IstioCertificateRequest{Csr: good}, []string{"authorization", "Bearer "}, codes.Unauthenticated, `"Bearer <token>"`},
		{"two authorization headers", &pb.IstioCertificateRequest{Csr: good}, append(append([]string{}, bearer...), bearer...), codes.Unauthenticated, "more than one"},
		{"CSR not PEM", &pb.IstioCertificateRequest{Csr: "hello"}, bearer, codes.InvalidArgument, "invalid CSR: not PEM"},
		{"empty CSR", &pb.IstioCertificateRequest{}, bearer, codes.InvalidArgument, "invalid CSR"},
		{"CSR for another identity", &pb.IstioCertificateRequest{Csr: string(csrFor(t, key, otherID))}, bearer, codes.PermissionDenied, "asks for spiffe://example.org/ns/foo/sa/other"},
		{"negative validity", &pb.IstioCertificateRequest{Csr: good, ValidityDuration: -1}, bearer, codes.InvalidArgument, "negative"},
		{"absurd validity", &pb.IstioCertificateRequest{Csr: good, ValidityDuration: 1 << 62}, bearer, codes.InvalidArgument, "out of range"},
		{"validity over max", &pb.IstioCertificateRequest{Csr: good, ValidityDuration: 365 * 86400}, bearer, codes.InvalidArgument, "over the maximum"},
		{"10 MiB message", &pb.IstioCertificateRequest{Csr: strings.Repeat("A", 10<<20)}, bearer, codes.ResourceExhausted, "larger than max"},
		{"1 MiB of metadata", &pb.IstioCertificateRequest{Csr: good}, append([]string{"x-padding", strings.Repeat("p", 1<<20)}, bearer...), codes.Internal, "header list size"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := rawCall(t, p, tc.req, tc.md...)
			wantCode(t, err, tc.code, tc.msg)
		})
	}
	if n := len(p.records(t)); n != 0 {
		t.Fatalf("refused requests left %d issuance records", n)
	}
	// The server still serves after all that.
	if err := rawCall(t, p, &pb.IstioCertificateRequest{Csr: good}, bearer...); err != nil {
		t.Fatalf("good request after bad ones: %v", err)
	}
}

func httpsClient(p *plane) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.roots(), ServerName: "localhost"}}}
}

func TestHTTPSign(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	url := "https://" + p.srv.Addr("https").String() + "/v1/sign"
	body, _ := json.Marshal(server.SignRequest{CSR: string(csrFor(t, newKey(t), fooID)), TTL: "2h"})
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+fooToken)
	resp, err := httpsClient(p).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var out server.SignResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	chain := parseChain(t, out.CertChain)
	if out.SPIFFEID != fooID.String() || out.Serial != chain[0].SerialNumber.Text(16) || out.NotAfter.Sub(out.NotBefore) != 2*time.Hour+ca.DefaultBackdate {
		t.Errorf("response %+v", out)
	}
	if out.TrustBundle != string(p.auth.RootsPEM()) {
		t.Error("trust bundle in response differs from the CA's")
	}
}

func TestHTTPRefusesBadRequests(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	url := "https://" + p.srv.Addr("https").String() + "/v1/sign"
	good := string(csrFor(t, newKey(t), fooID))
	js := func(v any) []byte { b, _ := json.Marshal(v); return b }
	tests := []struct {
		name   string
		body   []byte
		auth   string
		status int
		msg    string
	}{
		{"no credential", js(server.SignRequest{CSR: good}), "", 401, "no credential"},
		{"unknown token", js(server.SignRequest{CSR: good}), "Bearer x", 401, "unknown bearer token"},
		{"not JSON", []byte("csr=abc"), "Bearer " + fooToken, 400, "not a JSON sign request"},
		{"unknown field", []byte(`{"csr":"x","tll":"1h"}`), "Bearer " + fooToken, 400, `unknown field "tll"`},
		{"bad TTL", js(server.SignRequest{CSR: good, TTL: "soon"}), "Bearer " + fooToken, 400, "not a duration"},
		{"zero TTL", js(server.SignRequest{CSR: good, TTL: "0s"}), "Bearer " + fooToken, 400, "not positive"},
		{"negative TTL", js(server.SignRequest{CSR: good, TTL: "-1h"}), "Bearer " + fooToken, 400, "not positive"},
		{"absurd TTL", js(server.SignRequest{CSR: good, TTL: "87600h"}), "Bearer " + fooToken, 400, "over the maximum"},
		{"CSR not PEM", js(server.SignRequest{CSR: "abc"}), "Bearer " + fooToken, 400, "not PEM"},
		{"other identity", js(server.SignRequest{CSR: string(csrFor(t, newKey(t), otherID))}), "Bearer " + fooToken, 403, "credential proves"},
		{"10 MiB body", js(server.SignRequest{CSR: strings.Repeat("A", 10<<20)}), "Bearer " + fooToken, 413, "request body over 65536 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", url, bytes.NewReader(tc.body))
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := httpsClient(p).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e server.ErrorResponse
			json.NewDecoder(resp.Body).Decode(&e)
			if resp.StatusCode != tc.status || !strings.Contains(e.Error, tc.msg) {
				t.Fatalf("got %d %q, want %d saying %q", resp.StatusCode, e.Error, tc.status, tc.msg)
			}
		})
	}
	if n := len(p.records(t)); n != 0 {
		t.Fatalf("refused requests left %d issuance records", n)
	}
}

func TestHTTPBundle(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	base := "https://" + p.srv.Addr("https").String() + "/v1/bundle"
	get := func(url, accept string) (int, []byte) {
		req, _ := http.NewRequest("GET", url, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := httpsClient(p).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if code, b := get(base, ""); code != 200 || !bytes.Equal(b, p.auth.RootsPEM()) {
		t.Errorf("PEM bundle: %d %q", code, b)
	}
	for _, tc := range []struct{ url, accept string }{{base + "?format=spiffe", ""}, {base, "application/json"}} {
		code, b := get(tc.url, tc.accept)
		if code != 200 {
			t.Fatalf("SPIFFE bundle: %d %s", code, b)
		}
		sb, err := spiffebundle.Parse(td, b)
		if err != nil {
			t.Fatalf("not a SPIFFE bundle: %v", err)
		}
		if !sb.X509Authorities()[0].Equal(p.auth.Bundle().X509Authorities()[0]) {
			t.Error("SPIFFE bundle holds the wrong root")
		}
		if got := len(sb.JWTAuthorities()); got != 1 || !bytes.Contains(b, []byte(`"use":"jwt-svid"`)) {
			t.Errorf("SPIFFE bundle has %d jwt-svid keys, want the JWT signing key: %s", got, b)
		}
	}
	if code, _ := get(base+"?format=der", ""); code != 400 {
		t.Errorf("unknown format answered %d", code)
	}
}

func TestMonitoring(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	if _, err := grpcClient(t, p, nil).Sign(context.Background(), csrFor(t, newKey(t), fooID), 0, fooToken); err != nil {
		t.Fatal(err)
	}
	base := "http://" + p.srv.Addr("monitor").String()
	for _, tc := range []struct{ path, want string }{
		{"/healthz", "ok"},
		{"/readyz", "ok"},
		{"/metrics", `meshca_issuance_total{kind="dev-token",result="ok"} 1`},
		{"/metrics", `meshca_api_requests_total{code="OK",endpoint="CreateCertificate",protocol="grpc"} 1`},
		{"/metrics", `meshca_signing_ca_expiry_timestamp_seconds`},
	} {
		path, want := tc.path, tc.want
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("%s: %d, body lacks %q", path, resp.StatusCode, want)
		}
	}
}

// TestTLSVersionFloor: the CSR API refuses TLS 1.1.
func TestTLSVersionFloor(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	conn, err := tls.Dial("tcp", p.srv.Addr("https").String(), &tls.Config{RootCAs: p.roots(), ServerName: "localhost", MaxVersion: tls.VersionTLS11})
	if err == nil {
		conn.Close()
		t.Fatal("TLS 1.1 handshake succeeded")
	}
	conn, err = tls.Dial("tcp", p.srv.Addr("https").String(), &tls.Config{RootCAs: p.roots(), ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if v := conn.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Errorf("negotiated %x, want TLS 1.3", v)
	}
}

// TestClientRedialsWhenItsCertificateChanges: one ca/client.Client
// bootstraps with a token, then renews over mTLS with each new SVID in turn;
// TLS presents a client certificate only at handshake, so it must redial.
func TestClientRedialsWhenItsCertificateChanges(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	ctx := context.Background()
	var current *tls.Certificate
	c, err := client.New(client.Config{Addr: p.srv.Addr("grpc").String(), Roots: p.roots(), ServerName: "localhost",
		ClientCertificate: func() (*tls.Certificate, error) {
			if current == nil {
				return &tls.Certificate{}, nil
			}
			return current, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	key := newKey(t)
	chain, err := c.Sign(ctx, csrFor(t, key, fooID), 0, fooToken)
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	for i := range 2 {
		current = svid(parseChain(t, chain), key)
		key = newKey(t)
		if chain, err = c.Sign(ctx, csrFor(t, key, fooID), 0, ""); err != nil {
			t.Fatalf("renewal %d: %v", i, err)
		}
		rec, err := p.store.Issuance(ctx, parseChain(t, chain)[0].SerialNumber.Text(16))
		if err != nil || rec.Requester != "serial:"+current.Leaf.SerialNumber.Text(16) {
			t.Fatalf("renewal %d presented %q, want the SVID before it: %v", i, rec.Requester, err)
		}
	}
}

// TestClientPicksUpANewBundle: a client whose bundle (LoadRoots) does not
// hold the CA's root fails, and succeeds once the bundle is corrected,
// without being rebuilt: the connection is replaced when the bundle changes.
func TestClientPicksUpANewBundle(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	other := startPlane(t, filepath.Join(t.TempDir(), "other.db"))
	bundle := other.auth.RootsPEM() // the wrong CA's root, as a stale ConfigMap
	c, err := client.New(client.Config{Addr: p.srv.Addr("grpc").String(), ServerName: "localhost",
		LoadRoots: func() ([]byte, error) { return bundle, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Sign(ctx, csrFor(t, newKey(t), fooID), 0, fooToken); err == nil {
		t.Fatal("verified the CA with the wrong bundle")
	}
	bundle = p.auth.RootsPEM()
	if _, err := c.Sign(ctx, csrFor(t, newKey(t), fooID), 0, fooToken); err != nil {
		t.Fatalf("after the bundle was corrected: %v", err)
	}
}

// TestProfiling: the profiler is on the monitoring port only when asked.
func TestProfiling(t *testing.T) {
	for _, on := range []bool{false, true} {
		p := startPlaneWith(t, filepath.Join(t.TempDir(), "meshca.db"), func(c *server.Config) { c.Profiling = on })
		resp, err := http.Get("http://" + p.srv.Addr("monitor").String() + "/debug/pprof/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if want := map[bool]int{false: http.StatusNotFound, true: http.StatusOK}[on]; resp.StatusCode != want {
			t.Errorf("Profiling %v: /debug/pprof/ answered %d, want %d", on, resp.StatusCode, want)
		}
	}
}

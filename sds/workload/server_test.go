package workload

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/testca"
	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/socket"
)

const waitFor = 10 * time.Second

// harness is a Server behind socket.Listen, as the agent runs it.
type harness struct {
	t     *testing.T
	ca    *testca.CA
	src   *sds.StaticSource
	svid  *sds.SVID
	srv   *Server
	g     *grpc.Server
	addr  string // unix://...
	conns atomic.Int64
	calls atomic.Int64 // FetchX509SVID calls
}

func newHarness(t *testing.T, svid bool) *harness {
	t.Helper()
	h := &harness{t: t, ca: testca.New(t)}
	if svid {
		h.svid = h.ca.Issue(t, 1)
	}
	h.src = sds.NewStaticSource(h.svid)
	srv, err := New(Config{Source: h.src})
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	path := filepath.Join(t.TempDir(), "run", "workload.sock")
	l, err := socket.Listen(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	h.addr = "unix://" + path
	h.g = grpc.NewServer(grpc.Creds(socket.Credentials()),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			if strings.HasSuffix(info.FullMethod, "/FetchX509SVID") {
				h.calls.Add(1)
			}
			return handler(srv, ss)
		}))
	srv.Register(h.g)
	go h.g.Serve(countingListener{l, &h.conns})
	t.Cleanup(func() {
		srv.Close()
		h.g.Stop()
	})
	return h
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func (h *harness) set(svid *sds.SVID) *sds.SVID {
	h.svid = svid
	h.src.Set(svid)
	return svid
}

func (h *harness) rotate() *sds.SVID { return h.set(h.ca.Issue(h.t, h.svid.Version+1)) }

// raw returns a generated client that sends the security header only when
// asked to.
func (h *harness) raw() workloadpb.SpiffeWorkloadAPIClient {
	h.t.Helper()
	cc, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { cc.Close() })
	return workloadpb.NewSpiffeWorkloadAPIClient(cc)
}

// x509Streams opens FetchX509SVID and FetchX509Bundles on one raw client,
// with the security header, and returns their responses as they arrive.
func (h *harness) x509Streams() (chan result[workloadpb.X509SVIDResponse], chan result[workloadpb.X509BundlesResponse]) {
	h.t.Helper()
	c := h.raw()
	ctx := withHeader(h.t.Context())
	svids, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		h.t.Fatal(err)
	}
	bundles, err := c.FetchX509Bundles(ctx, &workloadpb.X509BundlesRequest{})
	if err != nil {
		h.t.Fatal(err)
	}
	return receive(svids), receive(bundles)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

func TestNewRequiresSource(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New(Config{}) succeeded")
	}
}

// TestX509SourceSeesRotation: go-spiffe's X509Source gets the SVID, then the
// rotated one on the same stream (one connection, one FetchX509SVID call).
func TestX509SourceSeesRotation(t *testing.T) {
	h := newHarness(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(h.addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer source.Close()

	got, err := source.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != testca.WorkloadID {
		t.Errorf("ID = %s, want %s", got.ID, testca.WorkloadID)
	}
	if len(got.Certificates) != 2 || !got.Certificates[0].Equal(h.svid.Certificates[0]) || !got.Certificates[1].Equal(h.svid.Certificates[1]) {
		t.Error("certificates are not the SVID's leaf and intermediate")
	}
	if !pki.SamePublicKey(h.svid.Key.Public(), got.PrivateKey.Public()) {
		t.Error("key is not the SVID's")
	}
	bundle, err := source.GetX509BundleForTrustDomain(testca.WorkloadID.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	if roots := bundle.X509Authorities(); len(roots) != 1 || !roots[0].Equal(h.ca.Root) {
		t.Error("bundle is not the CA's root")
	}

	oldSerial := got.Certificates[0].SerialNumber
	rotated := h.rotate()
	deadline := time.Now().Add(waitFor)
	for {
		got, err = source.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		if got.Certificates[0].SerialNumber.Cmp(oldSerial) != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("X509Source still holds the old SVID")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !got.Certificates[0].Equal(rotated.Certificates[0]) {
		t.Error("X509Source holds a certificate that is neither the old nor the rotated one")
	}
	if n := h.conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1: the client reconnected", n)
	}
	if n := h.calls.Load(); n != 1 {
		t.Errorf("%d FetchX509SVID calls, want 1: the client re-fetched", n)
	}
}

func TestFetchX509BundlesWithGoSpiffe(t *testing.T) {
	h := newHarness(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	set, err := workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr(h.addr))
	if err != nil {
		t.Fatal(err)
	}
	b, ok := set.Get(testca.WorkloadID.TrustDomain())
	if !ok {
		t.Fatalf("no bundle for %s in %v", testca.WorkloadID.TrustDomain(), set.Bundles())
	}
	if roots := b.X509Authorities(); len(roots) != 1 || !roots[0].Equal(h.ca.Root) {
		t.Error("bundle is not the CA's root")
	}
}

// TestX509SVIDResponse checks the wire format: DER chain, PKCS#8 key, DER
// roots.
func TestX509SVIDResponse(t *testing.T) {
	h := newHarness(t, true)
	st, err := h.raw().FetchX509SVID(withHeader(t.Context()), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Svids) != 1 {
		t.Fatalf("%d SVIDs, want 1", len(resp.Svids))
	}
	s := resp.Svids[0]
	if s.SpiffeId != testca.WorkloadID.String() {
		t.Errorf("spiffe_id = %q", s.SpiffeId)
	}
	chain, err := x509.ParseCertificates(s.X509Svid)
	if err != nil || len(chain) != 2 || !chain[0].Equal(h.svid.Certificates[0]) || !chain[1].Equal(h.svid.Certificates[1]) {
		t.Errorf("x509_svid is not the DER leaf and intermediate (%v)", err)
	}
	key, err := x509.ParsePKCS8PrivateKey(s.X509SvidKey)
	if err != nil || !pki.SamePublicKey(h.svid.Key.Public(), key.(crypto.Signer).Public()) {
		t.Errorf("x509_svid_key is not the SVID's PKCS#8 key (%v)", err)
	}
	roots, err := x509.ParseCertificates(s.Bundle)
	if err != nil || len(roots) != 1 || !roots[0].Equal(h.ca.Root) {
		t.Errorf("bundle is not the DER root (%v)", err)
	}
}

// TestStreams: FetchX509SVID waits for the first SVID and sends each
// change; FetchX509Bundles sends only when the roots change.
func TestStreams(t *testing.T) {
	h := newHarness(t, false)
	svidCh, bundleCh := h.x509Streams()

	none(t, svidCh)
	none(t, bundleCh)

	serial := func(r *workloadpb.X509SVIDResponse) string {
		c, err := x509.ParseCertificates(r.Svids[0].X509Svid)
		if err != nil {
			t.Fatal(err)
		}
		return c[0].SerialNumber.String()
	}
	root := func(r *workloadpb.X509BundlesResponse) *x509.Certificate {
		c, err := x509.ParseCertificates(r.Bundles["spiffe://example.org"])
		if err != nil || len(c) != 1 {
			t.Fatalf("bundles %v: %v", r.Bundles, err)
		}
		return c[0]
	}

	first := h.set(h.ca.Issue(t, 1))
	if got := serial(next(t, svidCh)); got != first.Certificates[0].SerialNumber.String() {
		t.Error("first response is not the SVID")
	}
	if !root(next(t, bundleCh)).Equal(h.ca.Root) {
		t.Error("first bundle is not the root")
	}

	rotated := h.rotate() // same roots
	if got := serial(next(t, svidCh)); got != rotated.Certificates[0].SerialNumber.String() {
		t.Error("second response is not the rotated SVID")
	}
	none(t, bundleCh)

	h.ca = testca.New(t)
	h.rotate() // new roots
	next(t, svidCh)
	if !root(next(t, bundleCh)).Equal(h.ca.Root) {
		t.Error("bundle after a root change is not the new root")
	}
	none(t, svidCh)
}

func TestSecurityHeader(t *testing.T) {
	h := newHarness(t, true)
	c := h.raw()
	calls := []struct {
		name string
		call func(context.Context) error
	}{
		{"FetchX509SVID", func(ctx context.Context) error {
			st, err := c.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
			if err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		}},
		{"FetchX509Bundles", func(ctx context.Context) error {
			st, err := c.FetchX509Bundles(ctx, &workloadpb.X509BundlesRequest{})
			if err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		}},
		{"FetchJWTSVID", func(ctx context.Context) error {
			_, err := c.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"x"}})
			return err
		}},
		{"FetchJWTBundles", func(ctx context.Context) error {
			st, err := c.FetchJWTBundles(ctx, &workloadpb.JWTBundlesRequest{})
			if err != nil {
				return err
			}
			_, err = st.Recv()
			return err
		}},
		{"ValidateJWTSVID", func(ctx context.Context) error {
			_, err := c.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "x", Svid: "y"})
			return err
		}},
	}
	headers := []struct {
		name string
		md   []string
	}{
		{"no header", nil},
		{"header false", []string{"workload.spiffe.io", "false"}},
		{"header twice", []string{"workload.spiffe.io", "true", "workload.spiffe.io", "true"}},
	}
	for _, call := range calls {
		for _, hd := range headers {
			t.Run(call.name+"/"+hd.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), waitFor)
				defer cancel()
				if hd.md != nil {
					ctx = metadata.AppendToOutgoingContext(ctx, hd.md...)
				}
				err := call.call(ctx)
				if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != "security header missing from request" {
					t.Errorf("got %v, want InvalidArgument: security header missing from request", err)
				}
			})
		}
		if strings.Contains(call.name, "JWT") {
			t.Run(call.name+"/with header", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(withHeader(context.Background()), waitFor)
				defer cancel()
				err := call.call(ctx)
				if status.Code(err) != codes.Unimplemented || !strings.Contains(status.Convert(err).Message(), "JWT-SVIDs are not served") {
					t.Errorf("got %v, want Unimplemented with an explanation", err)
				}
			})
		}
	}
}

func TestCloseEndsStreams(t *testing.T) {
	h := newHarness(t, true)
	st, err := h.raw().FetchX509SVID(withHeader(t.Context()), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	h.srv.Close()
	if _, err := st.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("stream after Close: %v, want Unavailable", err)
	}
	done := make(chan struct{})
	go func() { h.g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(waitFor):
		t.Fatal("GracefulStop did not return after Close")
	}
}

type result[R any] struct {
	resp *R
	err  error
}

func receive[R any](st grpc.ServerStreamingClient[R]) chan result[R] {
	ch := make(chan result[R], 8)
	go func() {
		for {
			r, err := st.Recv()
			ch <- result[R]{r, err}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

func next[R any](t *testing.T, ch chan result[R]) *R {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("stream ended: %v", r.err)
		}
		return r.resp
	case <-time.After(waitFor):
		t.Fatal("no response")
	}
	return nil
}

// none checks that nothing arrives for a short while.
func none[R any](t *testing.T, ch chan result[R]) {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil && !errors.Is(r.err, io.EOF) {
			t.Fatalf("stream ended: %v", r.err)
		}
		t.Fatal("unexpected response")
	case <-time.After(200 * time.Millisecond):
	}
}

// TestFetchWITSVIDUnimplemented: the Workload API spec's WIT-SVID profile
// (FetchWITSVID, newer than go-spiffe v2.6's proto) is answered
// Unimplemented, as the spec requires of an endpoint without WIT-SVIDs,
// and the connection keeps serving.
func TestFetchWITSVIDUnimplemented(t *testing.T) {
	h := newHarness(t, true)
	cc, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx := withHeader(context.Background())
	var out emptypb.Empty
	err = cc.Invoke(ctx, "/SpiffeWorkloadAPI/FetchWITSVID", &emptypb.Empty{}, &out)
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("FetchWITSVID: %v, want Unimplemented", err)
	}
	st, err := workloadpb.NewSpiffeWorkloadAPIClient(cc).FetchX509Bundles(ctx, &workloadpb.X509BundlesRequest{})
	if err == nil {
		_, err = st.Recv()
	}
	if err != nil {
		t.Fatalf("the connection after FetchWITSVID: %v", err)
	}
}

package envoy

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshca/meshca/internal/pki"
	"github.com/meshca/meshca/internal/testca"
	"github.com/meshca/meshca/sds"
)

// fakeMetrics counts what the server reports.
type fakeMetrics struct {
	nacks, pushes, lastPush atomic.Int64
}

func (m *fakeMetrics) NACK() { m.nacks.Add(1) }
func (m *fakeMetrics) Push(streams int) {
	m.pushes.Add(1)
	m.lastPush.Store(int64(streams))
}

// harness is a Server on a Unix socket with Run going.
type harness struct {
	t       testing.TB
	ca      *testca.CA
	src     *sds.StaticSource
	svid    *sds.SVID // the source's current SVID
	srv     *Server
	metrics *fakeMetrics
	g       *grpc.Server
	path    string
	stopRun context.CancelFunc
	runDone chan struct{}
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	return newHarnessWith(t, Config{})
}

// newHarnessWith is newHarness with cfg; its Source and Metrics are the
// harness's.
func newHarnessWith(t testing.TB, cfg Config) *harness {
	t.Helper()
	h := &harness{t: t, ca: testca.New(t), metrics: &fakeMetrics{}, runDone: make(chan struct{})}
	h.svid = h.ca.Issue(t, 1)
	h.src = sds.NewStaticSource(h.svid)
	cfg.Source, cfg.Metrics = h.src, h.metrics
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
	h.path = filepath.Join(t.TempDir(), "sds.sock")
	l, err := net.Listen("unix", h.path)
	if err != nil {
		t.Fatal(err)
	}
	h.g = grpc.NewServer()
	srv.Register(h.g)
	go h.g.Serve(l)
	ctx, cancel := context.WithCancel(context.Background())
	h.stopRun = cancel
	go func() {
		defer close(h.runDone)
		srv.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-h.runDone
		h.g.Stop()
	})
	return h
}

// rotate publishes a new SVID from the same CA.
func (h *harness) rotate() *sds.SVID {
	h.svid = h.ca.Issue(h.t, h.svid.Version+1)
	h.src.Set(h.svid)
	return h.svid
}

func (h *harness) dial() *grpc.ClientConn {
	h.t.Helper()
	cc, err := grpc.NewClient("unix://"+h.path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { cc.Close() })
	return cc
}

func (h *harness) client() secretservice.SecretDiscoveryServiceClient {
	return secretservice.NewSecretDiscoveryServiceClient(h.dial())
}

var testNode = &core.Node{Id: "sidecar~10.0.0.1~foo.ns~ns.svc.cluster.local", Cluster: "foo.ns"}

// envoyStream speaks SotW SDS as Envoy does: a request with node, names and
// type URL; then for every response an ACK (its version and nonce) or a
// NACK (the last accepted version, its nonce, an error_detail). A goroutine
// reads responses so a test can wait for one or for a short silence.
type envoyStream struct {
	t        testing.TB
	stream   secretservice.SecretDiscoveryService_StreamSecretsClient
	cancel   context.CancelFunc
	names    []string
	accepted string // the version_info Envoy would send: the last ACKed
	recv     chan *discovery.DiscoveryResponse
	err      chan error
}

func openStream(t testing.TB, c secretservice.SecretDiscoveryServiceClient) *envoyStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := c.StreamSecrets(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	s := &envoyStream{t: t, stream: st, cancel: cancel, recv: make(chan *discovery.DiscoveryResponse, 16), err: make(chan error, 1)}
	go func() {
		for {
			resp, err := st.Recv()
			if err != nil {
				s.err <- err
				return
			}
			s.recv <- resp
		}
	}()
	t.Cleanup(cancel)
	return s
}

func (s *envoyStream) send(req *discovery.DiscoveryRequest) {
	s.t.Helper()
	if req.Node == nil {
		req.Node = testNode
	}
	if req.TypeUrl == "" {
		req.TypeUrl = resource.SecretType
	}
	if err := s.stream.Send(req); err != nil {
		s.t.Fatalf("send: %v", err)
	}
}

// request subscribes to names (the initial request, or a change of names).
func (s *envoyStream) request(names ...string) {
	s.t.Helper()
	s.names = names
	s.send(&discovery.DiscoveryRequest{VersionInfo: s.accepted, ResourceNames: names})
}

func (s *envoyStream) ack(resp *discovery.DiscoveryResponse) {
	s.t.Helper()
	s.accepted = resp.GetVersionInfo()
	s.send(&discovery.DiscoveryRequest{VersionInfo: s.accepted, ResponseNonce: resp.GetNonce(), ResourceNames: s.names})
}

func (s *envoyStream) nack(resp *discovery.DiscoveryResponse) {
	s.t.Helper()
	s.send(&discovery.DiscoveryRequest{
		VersionInfo:   s.accepted,
		ResponseNonce: resp.GetNonce(),
		ResourceNames: s.names,
		ErrorDetail:   &rpcstatus.Status{Code: 3, Message: "Failed to load certificate chain (test)"},
	})
}

const (
	waitFor = 10 * time.Second       // the longest a response may take
	silence = 200 * time.Millisecond // how long "nothing more" is watched
)

// next returns the next response, failing the test if none comes.
func (s *envoyStream) next() *discovery.DiscoveryResponse {
	s.t.Helper()
	select {
	case resp := <-s.recv:
		return resp
	case err := <-s.err:
		s.t.Fatalf("stream ended: %v", err)
	case <-time.After(waitFor):
		s.t.Fatal("no response")
	}
	return nil
}

// none fails the test if a response arrives within the silence period.
func (s *envoyStream) none() {
	s.t.Helper()
	select {
	case resp := <-s.recv:
		s.t.Fatalf("unexpected response: version %q, %d resources", resp.GetVersionInfo(), len(resp.GetResources()))
	case err := <-s.err:
		s.t.Fatalf("stream ended: %v", err)
	case <-time.After(silence):
	}
}

// ended waits for the stream to end and returns its error (io.EOF for OK).
func (s *envoyStream) ended() error {
	s.t.Helper()
	for {
		select {
		case <-s.recv:
		case err := <-s.err:
			return err
		case <-time.After(waitFor):
			s.t.Fatal("stream did not end")
			return nil
		}
	}
}

// decode returns the secrets in resp by name.
func decode(t testing.TB, resp *discovery.DiscoveryResponse) map[string]*tlsv3.Secret {
	t.Helper()
	if resp.GetTypeUrl() != resource.SecretType {
		t.Fatalf("type_url = %q", resp.GetTypeUrl())
	}
	out := map[string]*tlsv3.Secret{}
	for _, a := range resp.GetResources() {
		var s tlsv3.Secret
		if err := a.UnmarshalTo(&s); err != nil {
			t.Fatal(err)
		}
		out[s.GetName()] = &s
	}
	return out
}

// checkCert checks that sec is svid's chain and key.
func checkCert(t testing.TB, sec *tlsv3.Secret, svid *sds.SVID) {
	t.Helper()
	tc := sec.GetTlsCertificate()
	if tc == nil {
		t.Fatalf("secret %q has no tls_certificate", sec.GetName())
	}
	pair, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatalf("secret %q: chain and key do not load: %v", sec.GetName(), err)
	}
	if len(pair.Certificate) != len(svid.Certificates) {
		t.Fatalf("secret %q: chain has %d certificates, want %d", sec.GetName(), len(pair.Certificate), len(svid.Certificates))
	}
	for i, c := range svid.Certificates {
		if string(pair.Certificate[i]) != string(c.Raw) {
			t.Errorf("secret %q: certificate %d differs from the SVID's", sec.GetName(), i)
		}
	}
	if len(pair.Leaf.URIs) != 1 || pair.Leaf.URIs[0].String() != svid.ID.String() {
		t.Errorf("secret %q: leaf URIs %v, want %s", sec.GetName(), pair.Leaf.URIs, svid.ID)
	}
	if !pair.PrivateKey.(*ecdsa.PrivateKey).Equal(svid.Key) {
		t.Errorf("secret %q: key is not the SVID's", sec.GetName())
	}
	if !bytesHasPEMType(tc.GetPrivateKey().GetInlineBytes(), "PRIVATE KEY") {
		t.Errorf("secret %q: key is not a PKCS#8 PEM block", sec.GetName())
	}
}

// checkRoots checks that sec is a validation context trusting svid's roots.
func checkRoots(t testing.TB, sec *tlsv3.Secret, svid *sds.SVID) {
	t.Helper()
	vc := sec.GetValidationContext()
	if vc == nil {
		t.Fatalf("secret %q has no validation_context", sec.GetName())
	}
	got, err := pki.ParseCertificates(vc.GetTrustedCa().GetInlineBytes())
	if err != nil {
		t.Fatalf("secret %q: %v", sec.GetName(), err)
	}
	if len(got) != len(svid.Roots) {
		t.Fatalf("secret %q: %d roots, want %d", sec.GetName(), len(got), len(svid.Roots))
	}
	for i := range got {
		if !got[i].Equal(svid.Roots[i]) {
			t.Errorf("secret %q: root %d differs", sec.GetName(), i)
		}
	}
	// The roots verify the chain, as Envoy's peers would.
	pool := x509.NewCertPool()
	for _, r := range got {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range svid.Certificates[1:] {
		inter.AddCert(c)
	}
	if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("secret %q: the roots do not verify the SVID: %v", sec.GetName(), err)
	}
}

func bytesHasPEMType(b []byte, typ string) bool {
	blk, _ := pem.Decode(b)
	return blk != nil && blk.Type == typ
}

// isEOF reports whether err is a stream's clean end.
func isEOF(err error) bool { return errors.Is(err, io.EOF) }

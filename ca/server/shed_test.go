package server_test

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/ca/server"
)

const heldToken = "token-held-in-attestation"

// holdingAttestor proves fooID for heldToken, but only once the test lets
// it: each call announces itself on entered and waits for one value on
// proceed, so a test can keep signing slots busy.
type holdingAttestor struct {
	entered chan struct{}
	proceed chan struct{}
}

func newHoldingAttestor() *holdingAttestor {
	return &holdingAttestor{entered: make(chan struct{}, 100), proceed: make(chan struct{}, 100)}
}

func (h *holdingAttestor) Attest(ctx context.Context, c attestor.Credential) (attestor.Identity, error) {
	if c.BearerToken != heldToken {
		return attestor.Identity{}, attestor.ErrNoCredential
	}
	h.entered <- struct{}{}
	select {
	case <-h.proceed:
		return attestor.Identity{ID: fooID, Kind: "held"}, nil
	case <-ctx.Done():
		return attestor.Identity{}, ctx.Err()
	}
}

// TestShedding: with two signing slots busy and no room in line, a third
// CSR is refused at once with ResourceExhausted and a retry hint, over
// gRPC (RetryInfo detail and grpc-retry-pushback-ms trailer, which
// client.RetryDelay reads) and over HTTPS (429 with Retry-After); the CSRs
// admitted are served once their slots free.
func TestShedding(t *testing.T) {
	hold := newHoldingAttestor()
	p := startPlaneWith(t, filepath.Join(t.TempDir(), "meshca.db"), func(c *server.Config) {
		c.MaxInFlightCSRs, c.MaxQueuedCSRs = 2, -1 // no line
	}, hold)
	c := grpcClient(t, p, nil)
	csr := csrFor(t, newKey(t), fooID)
	admitted := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := c.Sign(context.Background(), csr, 0, heldToken)
			admitted <- err
		}()
		<-hold.entered
	}

	_, err := c.Sign(context.Background(), csr, 0, fooToken)
	wantCode(t, err, codes.ResourceExhausted, "CA overloaded")
	if d, ok := client.RetryDelay(err); !ok || d < 250*time.Millisecond || d > time.Minute {
		t.Fatalf("RetryDelay = %s, %v; want a hint within [250ms, 1m]", d, ok)
	}
	var trailer metadata.MD
	err = signRaw(t, p, csr, grpc.Trailer(&trailer))
	wantCode(t, err, codes.ResourceExhausted, "CA overloaded")
	if v := trailer.Get("grpc-retry-pushback-ms"); len(v) != 1 || v[0] == "0" {
		t.Fatalf("grpc-retry-pushback-ms trailer %q", v)
	}

	req, _ := http.NewRequest(http.MethodPost, "https://"+p.srv.Addr("https").String()+"/v1/sign",
		strings.NewReader(`{"csr":"`+strings.ReplaceAll(string(csr), "\n", `\n`)+`"}`))
	req.Header.Set("Authorization", "Bearer "+fooToken)
	resp, err := httpsClient(p).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("HTTP %d, Retry-After %q; want 429 with a Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}

	metrics := scrape(t, p)
	for _, want := range []string{"meshca_csr_shed_total 3", "meshca_csr_in_flight 2", "meshca_csr_queued 0"} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}

	hold.proceed <- struct{}{}
	hold.proceed <- struct{}{}
	for range 2 {
		if err := <-admitted; err != nil {
			t.Fatalf("admitted CSR failed: %v", err)
		}
	}
	if _, err := c.Sign(context.Background(), csr, 0, fooToken); err != nil {
		t.Fatalf("CSR refused once the slots were free: %v", err)
	}
}

// signRaw sends csr with fooToken over a connection of its own, with opts.
func signRaw(t *testing.T, p *plane, csr []byte, opts ...grpc.CallOption) error {
	t.Helper()
	conn, err := grpc.NewClient(p.srv.Addr("grpc").String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: p.roots(), ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+fooToken)
	_, err = pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: string(csr)}, opts...)
	return err
}

// TestQueuedCSRWaitsForASlot: a CSR finding the only slot busy waits in
// line and is served when the slot frees, within the queue wait.
func TestQueuedCSRWaitsForASlot(t *testing.T) {
	hold := newHoldingAttestor()
	p := startPlaneWith(t, filepath.Join(t.TempDir(), "meshca.db"), func(c *server.Config) {
		c.MaxInFlightCSRs, c.CSRQueueWait = 1, time.Minute
	}, hold)
	c := grpcClient(t, p, nil)
	csr := csrFor(t, newKey(t), fooID)
	first := make(chan error, 1)
	go func() {
		_, err := c.Sign(context.Background(), csr, 0, heldToken)
		first <- err
	}()
	<-hold.entered
	second := make(chan error, 1)
	go func() {
		_, err := c.Sign(context.Background(), csr, 0, fooToken)
		second <- err
	}()
	select {
	case err := <-second:
		t.Fatalf("second CSR answered (%v) while the only slot was busy", err)
	case <-time.After(100 * time.Millisecond): // it waits in line, as it should
	}
	hold.proceed <- struct{}{}
	for _, ch := range []chan error{first, second} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
}

// TestStreamsPerConnection: past MaxStreamsPerConnection, a client's own
// calls wait in the client (HTTP/2 MAX_CONCURRENT_STREAMS) and never reach
// the CA, while another connection is served.
func TestStreamsPerConnection(t *testing.T) {
	hold := newHoldingAttestor()
	p := startPlaneWith(t, filepath.Join(t.TempDir(), "meshca.db"), func(c *server.Config) {
		c.MaxStreamsPerConnection = 1
	}, hold)
	c := grpcClient(t, p, nil)
	csr := csrFor(t, newKey(t), fooID)
	// One call to learn the server's settings, as a connection does.
	if _, err := c.Sign(context.Background(), csr, 0, fooToken); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := c.Sign(context.Background(), csr, 0, heldToken)
			done <- err
		}()
	}
	<-hold.entered
	select {
	case <-hold.entered:
		t.Fatal("a second call on the connection reached the CA past MaxStreamsPerConnection 1")
	case <-time.After(200 * time.Millisecond):
	}
	if err := signRaw(t, p, csr); err != nil {
		t.Fatalf("another connection was not served: %v", err)
	}
	hold.proceed <- struct{}{}
	<-hold.entered // the second call goes through once the first is done
	hold.proceed <- struct{}{}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// scrape returns the monitoring port's /metrics.
func scrape(t *testing.T, p *plane) string {
	t.Helper()
	resp, err := http.Get("http://" + p.srv.Addr("monitor").String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

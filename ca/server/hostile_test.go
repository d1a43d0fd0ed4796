package server_test

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/ca/server"
)

// Hostile clients (issue 14): each case gets a clear error and leaves no
// issuance record, and the server serves a good request afterwards.

// postSign sends body to POST /v1/sign with the test token and extra
// headers, and returns the status and the body.
func postSign(t *testing.T, p *plane, body []byte, header http.Header) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", "https://"+p.srv.Addr("https").String()+"/v1/sign", bytes.NewReader(body))
	req.Header = header.Clone()
	if req.Header == nil {
		req.Header = http.Header{}
	}
	req.Header.Set("Authorization", "Bearer "+fooToken)
	resp, err := httpsClient(p).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func signJSON(csr string) []byte {
	b, _ := json.Marshal(server.SignRequest{CSR: csr})
	return b
}

func mustServeAfterwards(t *testing.T, p *plane) {
	t.Helper()
	if n := len(p.records(t)); n != 0 {
		t.Fatalf("refused requests left %d issuance records", n)
	}
	if code, body := postSign(t, p, signJSON(string(csrFor(t, newKey(t), fooID))), nil); code != 200 {
		t.Fatalf("good request afterwards: %d %s", code, body)
	}
}

// TestOversizedRequestsOnEveryListener: messages, bodies and headers over
// the limits are refused with a clear error before anything is parsed.
func TestOversizedRequestsOnEveryListener(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	good := string(csrFor(t, newKey(t), fooID))
	bearer := []string{"authorization", "Bearer " + fooToken}
	t.Run("gRPC message over max-request-bytes", func(t *testing.T) {
		err := rawCall(t, p, &pb.IstioCertificateRequest{Csr: strings.Repeat("A", server.DefaultMaxRequestBytes+1)}, bearer...)
		wantCode(t, err, codes.ResourceExhausted, "larger than max")
	})
	t.Run("gRPC metadata over 32 KiB", func(t *testing.T) {
		err := rawCall(t, p, &pb.IstioCertificateRequest{Csr: good}, append([]string{"x-padding", strings.Repeat("p", 40<<10)}, bearer...)...)
		// grpc-go clients honour the limit the server advertises
		// (SETTINGS_MAX_HEADER_LIST_SIZE) and fail the call themselves.
		wantCode(t, err, codes.Internal, "header list size to send violates the maximum size (32768 bytes) set by server")
	})
	t.Run("HTTPS body over max-request-bytes", func(t *testing.T) {
		code, body := postSign(t, p, signJSON(strings.Repeat("A", server.DefaultMaxRequestBytes)), nil)
		if code != http.StatusRequestEntityTooLarge || !strings.Contains(body, "request body over 65536 bytes") {
			t.Fatalf("%d %s", code, body)
		}
	})
	t.Run("HTTPS headers over max-request-bytes", func(t *testing.T) {
		code, body := postSign(t, p, signJSON(good), http.Header{"X-Padding": {strings.Repeat("p", 2*server.DefaultMaxRequestBytes)}})
		if code != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("%d %s", code, body)
		}
	})
	t.Run("monitoring headers over 16 KiB", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://"+p.srv.Addr("monitor").String()+"/healthz", nil)
		req.Header.Set("X-Padding", strings.Repeat("p", 32<<10))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("32 KiB of headers on /healthz: %d", resp.StatusCode)
		}
	})
	mustServeAfterwards(t, p)
}

// TestSlowloris: a client that sends its request headers a byte at a time
// is cut off by ReadHeaderTimeout on the HTTPS and monitoring listeners.
func TestSlowloris(t *testing.T) {
	const timeout = time.Second
	p := startPlaneWith(t, filepath.Join(t.TempDir(), "meshca.db"), func(c *server.Config) { c.RequestTimeout = timeout })
	dial := map[string]func() (net.Conn, error){
		"https": func() (net.Conn, error) {
			return tls.Dial("tcp", p.srv.Addr("https").String(), &tls.Config{RootCAs: p.roots(), ServerName: "localhost"})
		},
		"monitor": func() (net.Conn, error) { return net.Dial("tcp", p.srv.Addr("monitor").String()) },
	}
	for name, dial := range dial {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, err := dial()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			closed := make(chan time.Time, 1)
			go func() {
				io.Copy(io.Discard, c)
				closed <- time.Now()
			}()
			start := time.Now()
			req := "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + strings.Repeat("s", 1000)
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case at := <-closed:
					if d := at.Sub(start); d > timeout+2*time.Second {
						t.Fatalf("cut off after %s, want about %s", d, timeout)
					}
					return
				case <-tick.C:
				}
				if time.Since(start) > closedWithin {
					t.Fatalf("a client sending a byte every 100ms was still connected after %s (%d bytes sent)", closedWithin, i)
				}
				c.Write([]byte{req[i%len(req)]})
			}
		})
	}
}

// TestMalformedPEM: a CSR with anything after its PEM block is refused.
func TestMalformedPEM(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	good := string(csrFor(t, newKey(t), fooID))
	bearer := []string{"authorization", "Bearer " + fooToken}
	for _, tc := range []struct{ name, csr, msg string }{
		{"junk after END", good + "junk", "trailing data after the PEM block"},
		{"two CSRs", good + good, "trailing data after the PEM block"},
		{"a certificate after the CSR", good + "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "trailing data after the PEM block"},
		{"truncated", good[:len(good)-30], "not PEM"},
		{"bad base64", strings.Replace(good, "\n", "\n!!!!", 2), "not PEM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := rawCall(t, p, &pb.IstioCertificateRequest{Csr: tc.csr}, bearer...)
			wantCode(t, err, codes.InvalidArgument, "invalid CSR: "+tc.msg)
			code, body := postSign(t, p, signJSON(tc.csr), nil)
			if code != 400 || !strings.Contains(body, "invalid CSR: "+tc.msg) {
				t.Fatalf("HTTPS: %d %s", code, body)
			}
		})
	}
	mustServeAfterwards(t, p)
}

// csrWithExtension is a good CSR for fooID carrying an extra, unknown
// extension of n bytes.
func csrWithExtension(t *testing.T, n int, critical bool) string {
	t.Helper()
	u, _ := url.Parse(fooID.String())
	tmpl := &x509.CertificateRequest{
		URIs: []*url.URL{u},
		ExtraExtensions: []pkix.Extension{{
			Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Critical: critical,
			Value: bytes.Repeat([]byte{0x42}, n),
		}},
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, newKey(t))
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// TestHugeExtensions: a CSR carrying a 60 KiB extension, sent under a
// body limit large enough to reach the CA, is refused with a clear error;
// so is one with 16 KiB (under the CSR size limit), which CheckCSR issued
// before it bounded extensions, and one with an unknown critical extension.
func TestHugeExtensions(t *testing.T) {
	p := startPlaneWith(t, filepath.Join(t.TempDir(), "meshca.db"), func(c *server.Config) { c.MaxRequestBytes = 256 << 10 })
	bearer := []string{"authorization", "Bearer " + fooToken}
	huge := csrWithExtension(t, 60<<10, false)
	err := rawCall(t, p, &pb.IstioCertificateRequest{Csr: huge}, bearer...)
	wantCode(t, err, codes.InvalidArgument, "over the 32768 byte limit")
	code, body := postSign(t, p, signJSON(huge), nil)
	if code != 400 || !strings.Contains(body, "over the 32768 byte limit") {
		t.Fatalf("HTTPS: %d %s", code, body)
	}
	err = rawCall(t, p, &pb.IstioCertificateRequest{Csr: csrWithExtension(t, 16<<10, false)}, bearer...)
	wantCode(t, err, codes.InvalidArgument, "bytes are over the 4096 byte limit")
	err = rawCall(t, p, &pb.IstioCertificateRequest{Csr: csrWithExtension(t, 16, true)}, bearer...)
	wantCode(t, err, codes.InvalidArgument, "invalid CSR: critical extension 1.3.6.1.4.1.99999.1 is not one the CA honours")
	mustServeAfterwards(t, p)
}

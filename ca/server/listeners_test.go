package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/ca/server"
)

// closedWithin is how long a test waits for the server to close a
// connection it should close after a sub-second timeout. It bounds the
// wait; it is not a measurement.
const closedWithin = 5 * time.Second

// idleClients open connections the way an idle client would and return
// once the connection is established and idle; the test then waits for the
// server to close it.
var idleClients = map[string]func(t *testing.T, p *plane) net.Conn{
	// gRPC: TLS with ALPN h2, the HTTP/2 preface and SETTINGS: a connection
	// ready for calls that makes none.
	"grpc": func(t *testing.T, p *plane) net.Conn {
		c, err := tls.Dial("tcp", p.srv.Addr("grpc").String(), &tls.Config{RootCAs: p.roots(), ServerName: "localhost", NextProtos: []string{"h2"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), h2Frame(0x4, 0, nil)...)); err != nil {
			t.Fatal(err)
		}
		return c
	},
	// HTTPS: one keep-alive request answered, then nothing.
	"https": func(t *testing.T, p *plane) net.Conn {
		c, err := tls.Dial("tcp", p.srv.Addr("https").String(), &tls.Config{RootCAs: p.roots(), ServerName: "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		keepAliveGet(t, c, "/v1/bundle")
		return c
	},
	// Monitoring: the same in plain HTTP.
	"monitor": func(t *testing.T, p *plane) net.Conn {
		c, err := net.Dial("tcp", p.srv.Addr("monitor").String())
		if err != nil {
			t.Fatal(err)
		}
		keepAliveGet(t, c, "/healthz")
		return c
	},
}

// h2Frame is one HTTP/2 frame.
func h2Frame(typ, flags byte, payload []byte) []byte {
	b := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags, 0, 0, 0, 0}
	return append(b, payload...)
}

func keepAliveGet(t *testing.T, c net.Conn, path string) {
	t.Helper()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("GET %s: %d, close %v", path, resp.StatusCode, resp.Close)
	}
}

// waitClosed reads (answering HTTP/2 PINGs, as a live client would, so
// gRPC's graceful GOAWAY completes) until the server closes c, or fails
// the test if it is still open after closedWithin.
func waitClosed(c net.Conn, h2 bool) error {
	c.SetDeadline(time.Now().Add(closedWithin))
	if !h2 {
		_, err := io.Copy(io.Discard, c)
		return stillOpen(err)
	}
	hdr := make([]byte, 9)
	for {
		if _, err := io.ReadFull(c, hdr); err != nil {
			return stillOpen(err)
		}
		payload := make([]byte, int(hdr[0])<<16|int(hdr[1])<<8|int(hdr[2]))
		if _, err := io.ReadFull(c, payload); err != nil {
			return stillOpen(err)
		}
		if typ, flags := hdr[3], hdr[4]; typ == 0x6 && flags&0x1 == 0 { // PING, not an ACK
			if _, err := c.Write(h2Frame(0x6, 0x1, payload)); err != nil {
				return nil // closed under us
			}
		}
	}
}

// stillOpen turns the error ending a read into the test's verdict: EOF or
// a reset mean the server closed the connection; a timeout means it did not.
func stillOpen(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("connection still open after %s", closedWithin)
	}
	return nil // io.EOF (io.Copy: nil), or reset by the server
}

// TestIdleConnectionsAreClosed (issue 14, finding 3): connections that
// carry no call are closed after IdleTimeout on every listener. Before
// --idle-timeout, gRPC and monitoring connections stayed open for ever
// (and HTTPS ones for the 10s ReadTimeout).
func TestIdleConnectionsAreClosed(t *testing.T) {
	const idle, n = 200 * time.Millisecond, 20
	p := startPlaneWith(t, filepath.Join(t.TempDir(), "meshca.db"), func(c *server.Config) { c.IdleTimeout = idle })
	for _, name := range []string{"grpc", "https", "monitor"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			conns := make([]net.Conn, n)
			for i := range conns {
				conns[i] = idleClients[name](t, p)
				defer conns[i].Close()
			}
			var (
				wg   sync.WaitGroup
				mu   sync.Mutex
				open int
			)
			for _, c := range conns {
				wg.Go(func() {
					if waitClosed(c, name == "grpc") != nil {
						mu.Lock()
						open++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			if open > 0 {
				t.Fatalf("%d of %d idle connections still open %s after an idle timeout of %s", open, n, closedWithin, idle)
			}
		})
	}
}

// TestConnectionCapPerListener: past MaxConnections, a listener accepts
// nothing more until a connection closes; the cap is per listener.
func TestConnectionCapPerListener(t *testing.T) {
	const limit = 4
	p := startPlaneWith(t, filepath.Join(t.TempDir(), "meshca.db"), func(c *server.Config) { c.MaxConnections = limit })
	for _, name := range []string{"grpc", "https", "monitor"} {
		t.Run(name, func(t *testing.T) {
			addr := p.srv.Addr(name).String()
			var held []net.Conn
			for range limit {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				held = append(held, c)
			}
			// The kernel completes the TCP handshake from its accept queue;
			// only an answer shows the server accepted the connection.
			answered := func() bool {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(300 * time.Millisecond))
				if name == "monitor" {
					fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
				} else {
					tc := tls.Client(c, &tls.Config{RootCAs: p.roots(), ServerName: "localhost"})
					return tc.Handshake() == nil
				}
				_, err = http.ReadResponse(bufio.NewReader(c), nil)
				return err == nil
			}
			if answered() {
				t.Fatalf("%s answered a connection past its cap of %d", name, limit)
			}
			held[0].Close()
			deadline := time.Now().Add(closedWithin)
			for !answered() {
				if time.Now().After(deadline) {
					t.Fatalf("%s still full after a connection closed", name)
				}
			}
		})
	}
}

// fromOther dials from 127.0.0.2, a source address other than the
// authenticated clients' 127.0.0.1 (Linux routes all of 127/8 to lo).
var fromOther = &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}

func httpsFrom(p *plane, d *net.Dialer) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext:     d.DialContext,
		TLSClientConfig: &tls.Config{RootCAs: p.roots(), ServerName: "localhost"},
	}}
}

// TestUnauthenticatedRequestsThrottledPerSource: past its burst of failed
// authentications, a source address gets ResourceExhausted / 429 before
// its credential is looked at, on gRPC, the HTTPS API and the admin API,
// which share one budget; other addresses are served as before.
func TestUnauthenticatedRequestsThrottledPerSource(t *testing.T) {
	const burst = 3
	p := startPlaneWith(t, filepath.Join(t.TempDir(), "meshca.db"), func(c *server.Config) {
		c.UnauthenticatedBurst, c.UnauthenticatedRate = burst, 0.001
	})
	good := string(csrFor(t, newKey(t), fooID))
	signBody, _ := json.Marshal(server.SignRequest{CSR: good})
	post := func(c *http.Client, path, token string) *http.Response {
		req, _ := http.NewRequest("POST", "https://"+p.srv.Addr("https").String()+path, bytes.NewReader(signBody))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	other := httpsFrom(p, fromOther)
	// The burst, spent on three APIs.
	wantCode(t, rawCallFrom(t, p, fromOther, &pb.IstioCertificateRequest{Csr: good}, "authorization", "Bearer nope"), codes.Unauthenticated, "unknown bearer token")
	if resp := post(other, "/v1/sign", "nope"); resp.StatusCode != 401 {
		t.Fatalf("bad token answered %d, want 401", resp.StatusCode)
	}
	if resp := post(other, "/v1/admin/revocations", "nope"); resp.StatusCode != 401 {
		t.Fatalf("bad admin token answered %d, want 401", resp.StatusCode)
	}
	// Then refused, even with a good credential (a NAT shared with an
	// attacker shares the budget).
	wantCode(t, rawCallFrom(t, p, fromOther, &pb.IstioCertificateRequest{Csr: good}, "authorization", "Bearer "+fooToken), codes.ResourceExhausted, "too many unauthenticated requests")
	for _, path := range []string{"/v1/sign", "/v1/admin/revocations"} {
		resp := post(other, path, "nope")
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("%s past the burst: %d, Retry-After %q; want 429 with Retry-After", path, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}
	// 127.0.0.1 is a different source: served, and its failures are its own.
	if resp := post(httpsClient(p), "/v1/sign", fooToken); resp.StatusCode != 200 {
		t.Fatalf("authenticated client from another address: %d", resp.StatusCode)
	}
	if err := rawCall(t, p, &pb.IstioCertificateRequest{Csr: good}, "authorization", "Bearer "+fooToken); err != nil {
		t.Fatalf("authenticated gRPC client from another address: %v", err)
	}
}

// fds counts this process's open descriptors (Linux).
func fds(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	return len(ents)
}

// rawCallFrom is rawCall dialing with d.
func rawCallFrom(t *testing.T, p *plane, d *net.Dialer, req *pb.IstioCertificateRequest, md ...string) error {
	t.Helper()
	conn, err := grpc.NewClient(p.srv.Addr("grpc").String(),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: p.roots(), ServerName: "localhost"})),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, md...)
	_, err = pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, req)
	return err
}

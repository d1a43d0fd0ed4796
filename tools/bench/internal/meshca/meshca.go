// Package meshca builds and runs `meshca server` as a user would — the
// binary from the repository, a fresh data directory, fixed free ports on
// 127.0.0.1 — waits for /readyz, and gets first SVIDs from it with join
// tokens from its admin API, so that clients can then renew over mTLS.
package meshca

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshca/meshca/tools/bench/internal/csrapi"
	"github.com/meshca/meshca/tools/bench/internal/pki"
	"github.com/meshca/meshca/tools/bench/internal/proc"
)

const readyTimeout = 60 * time.Second

// Build compiles ./cmd/meshca of the repository at root into out.
func Build(root, out string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./cmd/meshca") //nolint:gosec // G204: the output path is the caller's
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("meshca: build: %w\n%s", err, b)
	}
	return nil
}

// SupportsMode reports whether the binary's --k8s-attestation takes mode,
// as its help text lists the modes; if not, why.
func SupportsMode(bin, mode string) (bool, string) {
	out, err := exec.Command(bin, "server", "--help").CombinedOutput()
	if err != nil {
		return false, fmt.Sprintf("`meshca server --help` failed: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "--k8s-attestation") {
			if strings.Contains(line, mode) {
				return true, ""
			}
			return false, fmt.Sprintf("the --k8s-attestation of this meshca binary does not offer %q", mode)
		}
	}
	return false, "this meshca has no --k8s-attestation flag"
}

// Config is how one server is started.
type Config struct {
	// Bin is the meshca binary; Dir a fresh directory for its data and log.
	Bin, Dir string
	// Mode is --k8s-attestation; Kubeconfig is passed when not empty.
	Mode, Kubeconfig string
	// AdminAPI enables the HTTPS listener, for join tokens.
	AdminAPI bool
	// Extra are more flags, after those Start sets.
	Extra []string
}

// Server is a running `meshca server`.
type Server struct {
	Proc                         *proc.Proc
	GRPCAddr, HTTPSAddr, Monitor string
	// Roots is the trust bundle it wrote (bundle.pem).
	Roots   *x509.CertPool
	dataDir string
}

// Start starts the server and waits until /readyz answers 200.
func Start(cfg Config) (*Server, error) {
	ports, err := proc.FreePorts(3)
	if err != nil {
		return nil, err
	}
	addr := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	s := &Server{GRPCAddr: addr(0), Monitor: addr(2), dataDir: filepath.Join(cfg.Dir, "data")}
	if cfg.AdminAPI {
		s.HTTPSAddr = addr(1)
	}
	args := []string{"server", "--data-dir", s.dataDir, "--trust-domain", "cluster.local",
		"--grpc-listen", s.GRPCAddr, "--https-listen", s.HTTPSAddr, "--monitoring-listen", s.Monitor,
		"--log-level", "warn", "--k8s-attestation", cfg.Mode}
	if cfg.Kubeconfig != "" {
		args = append(args, "--kubeconfig", cfg.Kubeconfig)
	}
	args = append(args, cfg.Extra...)
	if s.Proc, err = proc.Start("meshca "+cfg.Mode, filepath.Join(cfg.Dir, "meshca.log"), nil, cfg.Bin, args...); err != nil {
		return nil, err
	}
	// Ready: /readyz says so and the trust bundle is written (meshca
	// writes it just after its listeners start).
	hc := http.Client{Timeout: time.Second}
	bundle := filepath.Join(s.dataDir, "bundle.pem")
	var b []byte
	if err := s.Proc.WaitReady(readyTimeout, func() bool {
		resp, err := hc.Get("http://" + s.Monitor + "/readyz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		b, err = os.ReadFile(bundle)
		return resp.StatusCode == http.StatusOK && err == nil && len(b) > 0
	}); err != nil {
		s.Proc.Stop()
		return nil, err
	}
	s.Roots = x509.NewCertPool()
	if !s.Roots.AppendCertsFromPEM(b) {
		s.Proc.Stop()
		return nil, errors.New("meshca: bundle.pem holds no certificate")
	}
	return s, nil
}

// Stop stops the server.
func (s *Server) Stop() { s.Proc.Stop() }

// SVIDs gets a first certificate for each SPIFFE ID: a join token from the
// admin API, then a CSR over gRPC with that token, as `meshca agent
// --join-token-file` does. Sixteen at a time.
func (s *Server) SVIDs(ctx context.Context, ids []string) ([]tls.Certificate, error) {
	if s.HTTPSAddr == "" {
		return nil, errors.New("meshca: started without the admin API")
	}
	admin, err := os.ReadFile(filepath.Join(s.dataDir, "admin-token"))
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: s.Roots, ServerName: pki.ServerName}}}
	defer hc.CloseIdleConnections()
	conn, err := csrapi.Dial(ctx, s.GRPCAddr, s.Roots, pki.ServerName, nil)
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close() }()
	out := make([]tls.Certificate, len(ids))
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		sem   = make(chan struct{}, 16)
	)
	for i, id := range ids {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := s.svid(ctx, hc, strings.TrimSpace(string(admin)), conn, id)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && first == nil {
				first = err
			}
			out[i] = c
		})
	}
	wg.Wait()
	return out, first
}

func (s *Server) svid(ctx context.Context, hc *http.Client, admin string, conn *csrapi.Conn, id string) (tls.Certificate, error) {
	body, _ := json.Marshal(map[string]string{"spiffe_id": id, "ttl": "1h"})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+s.HTTPSAddr+"/v1/admin/join-tokens", bytes.NewReader(body))
	if err != nil {
		return tls.Certificate{}, err
	}
	req.Header.Set("Authorization", "Bearer "+admin)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("meshca: join token: %w", err)
	}
	defer resp.Body.Close()
	var jt struct{ Token string }
	if err := json.NewDecoder(resp.Body).Decode(&jt); err != nil || resp.StatusCode/100 != 2 || jt.Token == "" {
		return tls.Certificate{}, fmt.Errorf("meshca: join token: status %d, %v", resp.StatusCode, err)
	}
	csr, err := pki.NewCSR(id)
	if err != nil {
		return tls.Certificate{}, err
	}
	chain, err := conn.Sign(ctx, csr.PEM, jt.Token)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("meshca: first SVID for %s: %w", id, err)
	}
	return csrapi.Certificate(chain, csr.Key)
}

package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshca/meshca/ca/server"
)

// adminClient calls the CA server's admin API (meshca token, meshca audit
// issued): HTTPS verified against the CA's bundle, the admin bearer token.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

// newAdminClient reads the bundle and admin token (by default from the
// server's data dir). Errors are about the caller's input.
func newAdminClient(addr, dataDir, caFile, tokenFile string) (*adminClient, error) {
	if caFile == "" {
		caFile = filepath.Join(dataDir, "bundle.pem")
	}
	if tokenFile == "" {
		tokenFile = filepath.Join(dataDir, "admin-token")
	}
	roots, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(roots) {
		return nil, fmt.Errorf("--ca-file %s holds no PEM certificates", caFile)
	}
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("--admin-token-file: %w", err)
	}
	host, _, _ := strings.Cut(addr, ":")
	if host == "127.0.0.1" || host == "[::1]" || host == "" {
		host = "localhost" // the server's certificate names localhost by default
	}
	return &adminClient{
		base:  "https://" + addr,
		token: strings.TrimSpace(string(tok)),
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS12}}},
	}, nil
}

// do sends body (nil for none) as JSON to path and decodes the answer into
// out. A non-200 answer is an error carrying the server's message.
func (c *adminClient) do(ctx context.Context, method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e server.ErrorResponse
		json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("admin API: %s: %s", resp.Status, e.Error)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("admin API: bad response: %w", err)
	}
	return nil
}

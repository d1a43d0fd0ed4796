// Package adminclient calls the CA server's admin API (join tokens, the
// issuance log, revocations): what `meshca token`, `meshca revoke` and
// `meshca audit issued` use.
package adminclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshca/meshca/ca/server"
)

// Config configures a Client. Zero fields get the defaults
// documented on each.
type Config struct {
	// Addr is the CA's HTTPS API address, host:port or host (port 443).
	// Required.
	Addr string
	// DataDir is the server's data directory: the defaults of CAFile and
	// TokenFile are in it.
	DataDir string
	// CAFile holds the PEM roots that verify the server. Default
	// <DataDir>/bundle.pem.
	CAFile string
	// TokenFile holds the admin bearer token. Default <DataDir>/admin-token.
	TokenFile string
	// Timeout bounds one call. Default 30s.
	Timeout time.Duration
}

// Client calls the CA server's admin API (/v1/admin/...) over HTTPS verified
// against the CA's bundle, with the admin bearer token.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// New reads the bundle and the admin token. Its errors are about the
// caller's input (files, address).
func New(cfg Config) (*Client, error) {
	if cfg.CAFile == "" {
		cfg.CAFile = filepath.Join(cfg.DataDir, "bundle.pem")
	}
	if cfg.TokenFile == "" {
		cfg.TokenFile = filepath.Join(cfg.DataDir, "admin-token")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	roots, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(roots) {
		return nil, fmt.Errorf("--ca-file %s holds no PEM certificates", cfg.CAFile)
	}
	tok, err := os.ReadFile(cfg.TokenFile)
	if err != nil {
		return nil, fmt.Errorf("--admin-token-file: %w", err)
	}
	host, _, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		// No port: HTTPS's own, 443, as a URL would have it.
		if host, _, err = net.SplitHostPort(cfg.Addr + ":443"); err != nil {
			return nil, fmt.Errorf("--server %q: %w", cfg.Addr, err)
		}
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && (ip.IsLoopback() || ip.IsUnspecified())) {
		host = "localhost" // the server's certificate names localhost by default
	}
	return &Client{
		base:  "https://" + cfg.Addr,
		token: strings.TrimSpace(string(tok)),
		http: &http.Client{Timeout: cfg.Timeout, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS12}}},
	}, nil
}

// CreateJoinToken asks for a single-use join token.
func (c *Client) CreateJoinToken(ctx context.Context, req server.JoinTokenRequest) (*server.JoinTokenResponse, error) {
	var out server.JoinTokenResponse
	return &out, c.do(ctx, http.MethodPost, "/v1/admin/join-tokens", req, &out)
}

// Issuances lists the issuance log: spiffeID "" for every identity, since 0
// for every record kept.
func (c *Client) Issuances(ctx context.Context, spiffeID string, since time.Duration) (*server.IssuancesResponse, error) {
	q := url.Values{}
	if spiffeID != "" {
		q.Set("spiffe_id", spiffeID)
	}
	if since > 0 {
		q.Set("since", since.String())
	}
	var out server.IssuancesResponse
	return &out, c.do(ctx, http.MethodGet, "/v1/admin/issuances?"+q.Encode(), nil, &out)
}

// Revoke puts a serial or an identity on the deny-list.
func (c *Client) Revoke(ctx context.Context, req server.RevokeRequest) (*server.RevokeResponse, error) {
	var out server.RevokeResponse
	return &out, c.do(ctx, http.MethodPost, "/v1/admin/revocations", req, &out)
}

// do sends body (nil for none) as JSON to path and decodes the answer into
// out. A non-200 answer is an error carrying the server's message.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
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
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&e)
		return fmt.Errorf("admin API: %s: %s", resp.Status, e.Error)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("admin API: bad response: %w", err)
	}
	return nil
}

// Package adminclient calls the CA server's admin API (join tokens, the
// issuance log, revocations, the CA's status and rotations): what `meshca
// token`, `meshca revoke`, `meshca audit issued` and `meshca ca` use, and
// how the CA's answers print as tables (tables.go).
package adminclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/meshca/meshca/ca"
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

// The `meshca ca` admin calls (CARequest.Kind).
const (
	CAStatus             = "status"
	CARotateRoot         = "rotate-root"
	CARotateIntermediate = "rotate-intermediate"
)

// CARequest is one `meshca ca` admin call and its flags.
type CARequest struct {
	// Kind is CAStatus, CARotateRoot or CARotateIntermediate.
	Kind string
	// Advance (the phase to leave) and Abort change what CARotateRoot
	// does; without them it starts a rotation.
	Advance string
	Abort   bool
	// Now and Reason are those of CARotateIntermediate.
	server.IntermediateRotationRequest
}

// AddFlags registers the flags of r.Kind (docs/configuration.md lists
// them).
func (r *CARequest) AddFlags(fs *pflag.FlagSet) {
	switch r.Kind {
	case CARotateRoot:
		fs.StringVar(&r.Advance, "advance", "", "take this phase's step now instead of when due: prepared (switch) or switched (complete)")
		fs.BoolVar(&r.Abort, "abort", false, "drop a prepared rotation's new root")
	case CARotateIntermediate:
		fs.BoolVar(&r.Now, "now", false, "required: rotate now (intermediates otherwise rotate by themselves)")
		fs.StringVar(&r.Reason, "reason", "", "why, for the record")
	}
}

// CA makes the admin call r.
func (c *Client) CA(ctx context.Context, r CARequest) (Answer, error) {
	switch r.Kind {
	case CAStatus:
		return c.CAStatus(ctx)
	case CARotateRoot:
		return c.RotateRoot(ctx, r.Advance, r.Abort)
	case CARotateIntermediate:
		return c.RotateIntermediate(ctx, r.IntermediateRotationRequest)
	}
	return nil, fmt.Errorf("adminclient: unknown call %q", r.Kind)
}

// CAStatus reads the CA's roots, intermediates and rotations.
func (c *Client) CAStatus(ctx context.Context) (*Status, error) {
	var out ca.Status
	return &Status{&out}, c.do(ctx, http.MethodGet, "/v1/admin/ca", nil, &out)
}

// RotateRoot starts a root rotation, or with advance (the phase to leave)
// takes its next step now, or with abort drops a prepared one.
func (c *Client) RotateRoot(ctx context.Context, advance string, abort bool) (*RootRotation, error) {
	req := server.RootRotationRequest{Action: ca.RootRotationStart}
	switch {
	case abort && advance != "":
		return nil, errors.New("--advance and --abort: choose one")
	case abort:
		req.Action = ca.RootRotationAbort
	case advance != "":
		req.Action, req.Phase = ca.RootRotationAdvance, advance
	}
	var out server.RootRotationResponse
	return &RootRotation{&out}, c.do(ctx, http.MethodPost, "/v1/admin/root-rotation", req, &out)
}

// RotateIntermediate asks for the emergency intermediate rotation; req.Now
// must be set.
func (c *Client) RotateIntermediate(ctx context.Context, req server.IntermediateRotationRequest) (*IntermediateRotation, error) {
	if !req.Now {
		return nil, errors.New("give --now: this replaces the signing intermediate at once and refuses renewal to every certificate it signed (intermediates otherwise rotate by themselves)")
	}
	var out server.IntermediateRotationResponse
	return &IntermediateRotation{&out}, c.do(ctx, http.MethodPost, "/v1/admin/intermediate-rotation", req, &out)
}

// Package vault keeps meshca's root in HashiCorp Vault, through
// github.com/hashicorp/vault/api: the root's private key as a non-exportable
// Transit key that signs meshca's intermediates (TransitKeys, a
// ca.RootKeys), or Vault's PKI engine as the root that signs them from a
// CSR (PKIParent, a ca.Parent). Vault is called once per intermediate
// rotation, never once per workload: while it is unreachable leaves are
// still signed by the current intermediate, and the CA retries preparing
// the next one.
//
// Client logs in (token, AppRole or Kubernetes auth), renews its token and
// logs in again before it expires, and retries a call refused with 403 once
// after logging in again.
package vault

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/meshca/meshca/internal/clock"
)

// Auth methods (Config.Auth).
const (
	AuthToken      = "token"
	AuthAppRole    = "approle"
	AuthKubernetes = "kubernetes"
)

// Defaults for Config's zero fields.
const (
	DefaultTransitMount        = "transit"
	DefaultTransitKeyType      = "ecdsa-p256"
	DefaultPKIPath             = "pki/root/sign-intermediate"
	DefaultAppRoleMount        = "approle"
	DefaultKubernetesMount     = "kubernetes"
	DefaultKubernetesTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token" // #nosec G101 -- a path, not a credential
	DefaultTimeout             = 30 * time.Second
)

// ErrPermission is returned when Vault refuses a call even after logging in
// again: the token's policies do not allow it.
var ErrPermission = errors.New("vault: permission denied")

// ErrUnreachable is returned when Vault cannot be reached (no answer, a
// connection refused, a TLS failure).
var ErrUnreachable = errors.New("vault: unreachable")

// Config configures the Vault client. Zero fields get the documented
// defaults.
type Config struct {
	// Addr is Vault's address (https://vault:8200). Empty: Vault is not
	// used.
	Addr string
	// AllowInsecureHTTP permits an http:// Addr (tokens and CSRs in
	// clear). Off: an http:// address is refused at start.
	AllowInsecureHTTP bool
	// CAFile verifies Vault's TLS certificate (PEM); empty: the system's
	// roots.
	CAFile string
	// Namespace is the Vault Enterprise namespace; empty for none.
	Namespace string
	// Auth is AuthToken (default), AuthAppRole or AuthKubernetes.
	Auth string
	// TokenFile holds the token for AuthToken; empty: $VAULT_TOKEN.
	TokenFile string
	// RoleIDFile and SecretIDFile hold AppRole's role and secret IDs;
	// AppRoleMount is where AppRole is enabled (default "approle").
	RoleIDFile, SecretIDFile, AppRoleMount string
	// KubernetesRole is the Vault role for Kubernetes auth (required for
	// it), KubernetesMount where it is enabled (default "kubernetes"),
	// KubernetesTokenFile the server's own ServiceAccount token (default
	// the in-cluster path; a projected token with Vault's audience is
	// better).
	KubernetesRole, KubernetesMount, KubernetesTokenFile string
	// TransitKey, when set, keeps the root's key in Transit: the key's
	// name under TransitMount (default "transit"). A missing key is
	// created as TransitKeyType (default "ecdsa-p256"; ecdsa-p384 and
	// rsa-2048/3072/4096 are allowed), non-exportable.
	TransitKey, TransitMount, TransitKeyType string
	// PKIPath is the PKI endpoint that signs meshca's intermediate CSR
	// when TransitKey is empty. Default "pki/root/sign-intermediate";
	// "<mount>/issuer/<ref>/sign-intermediate" names an issuer.
	PKIPath string
	// PKINextPath is a second PKI endpoint, under a new root, staged for a
	// root rotation; empty for none.
	PKINextPath string
	// Timeout bounds each call to Vault. Default 30s.
	Timeout time.Duration
	// Clock defaults to the wall clock; Logger to discarding; Metrics to
	// none.
	Clock   clock.Clock
	Logger  *slog.Logger
	Metrics Metrics
}

// Metrics is what the client reports.
type Metrics interface {
	// Request counts one call to Vault by operation and result ("ok" or
	// "error").
	Request(op, result string)
	// TokenExpiry is when the current token expires (zero: never).
	TokenExpiry(t time.Time)
}

type nopMetrics struct{}

func (nopMetrics) Request(string, string) {}
func (nopMetrics) TokenExpiry(time.Time)  {}

// Enabled reports whether Vault is configured.
func (c *Config) Enabled() bool { return c.Addr != "" }

func (c *Config) setDefaults() error {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Auth, AuthToken)
	def(&c.TransitMount, DefaultTransitMount)
	def(&c.TransitKeyType, DefaultTransitKeyType)
	def(&c.PKIPath, DefaultPKIPath)
	def(&c.AppRoleMount, DefaultAppRoleMount)
	def(&c.KubernetesMount, DefaultKubernetesMount)
	def(&c.KubernetesTokenFile, DefaultKubernetesTokenFile)
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	c.Clock = clock.OrReal(c.Clock)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = nopMetrics{}
	}
	u, err := url.Parse(c.Addr)
	switch {
	case err != nil:
		return fmt.Errorf("vault: --vault-addr %q: want https://host:port: %w", c.Addr, err)
	case u.Scheme == "http" && !c.AllowInsecureHTTP:
		return fmt.Errorf("vault: --vault-addr %s is not TLS: tokens and CSRs would cross the network in clear; use https, or --vault-allow-insecure-http for a local test server", c.Addr)
	case u.Scheme != "https" && u.Scheme != "http":
		return fmt.Errorf("vault: --vault-addr %q: want https://host:port", c.Addr)
	case u.Host == "":
		return fmt.Errorf("vault: --vault-addr %q has no host", c.Addr)
	case c.Timeout < 0:
		return errors.New("vault: the timeout must be positive")
	}
	if _, err := keyTypeOf(c.TransitKeyType); err != nil {
		return err
	}
	switch c.Auth {
	case AuthToken:
	case AuthAppRole:
		if c.RoleIDFile == "" || c.SecretIDFile == "" {
			return errors.New("vault: AppRole auth needs --vault-approle-role-id-file and --vault-approle-secret-id-file")
		}
	case AuthKubernetes:
		if c.KubernetesRole == "" {
			return errors.New("vault: Kubernetes auth needs --vault-kubernetes-role")
		}
	default:
		return fmt.Errorf("vault: --vault-auth %q: want token, approle or kubernetes", c.Auth)
	}
	return nil
}

// Client is a logged-in Vault client. Use New; Run keeps its token fresh.
type Client struct {
	cfg Config
	api *api.Client

	// mu serialises logins; tokenExp is the token's expiry (zero: none
	// known), renewable whether it may be renewed; both under mu.
	mu        sync.Mutex
	tokenExp  time.Time
	renewable bool
	// loginGen counts logins, so that callers that saw a 403 with one
	// token log in only once between them (0: not logged in yet).
	loginGen uint64
}

// New checks cfg, makes the client and logs in. Credentials Vault refuses
// are an error. A Vault that cannot be reached is not: the client is
// returned, not logged in, and Run keeps trying (a CA restarted while Vault
// is down still signs leaves with its stored intermediate); calls fail with
// ErrUnreachable until then.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pemBytes, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("vault: --vault-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("vault: --vault-ca-file %s holds no PEM certificate", cfg.CAFile)
		}
		tlsCfg.RootCAs = pool
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsCfg,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     90 * time.Second,
	}
	ac, err := api.NewClient(&api.Config{
		Address:    cfg.Addr,
		HttpClient: &http.Client{Transport: tr, Timeout: cfg.Timeout},
		Timeout:    cfg.Timeout,
		// The CA retries what fails (the next intermediate is prepared
		// early); the client must not stall a rotation on its own.
		MaxRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	// NewClient takes VAULT_TOKEN and VAULT_NAMESPACE from the
	// environment; only the configuration counts here.
	ac.ClearToken()
	ac.ClearNamespace()
	if cfg.Namespace != "" {
		ac.SetNamespace(cfg.Namespace)
	}
	c := &Client{cfg: cfg, api: ac}
	if err := c.login(ctx, 0); err != nil {
		if !errors.Is(err, ErrUnreachable) {
			return nil, err
		}
		cfg.Logger.Warn("vault is unreachable: not logged in yet; retrying in the background", "err", err)
	}
	return c, nil
}

// call calls Vault's path with data (POST), or with get set (data nil) a
// GET, as op for the metrics. A 403 is retried once after logging in
// again: the token may have expired between renewals.
func (c *Client) call(ctx context.Context, op, path string, data map[string]any, get bool) (*api.Secret, error) {
	for attempt := 0; ; attempt++ {
		c.mu.Lock()
		gen := c.loginGen
		c.mu.Unlock()
		cctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		var (
			s   *api.Secret
			err error
		)
		if get {
			s, err = c.api.Logical().ReadWithContext(cctx, path)
		} else {
			s, err = c.api.Logical().WriteWithContext(cctx, path, data)
		}
		cancel()
		if err == nil {
			c.cfg.Metrics.Request(op, "ok")
			return s, nil
		}
		c.cfg.Metrics.Request(op, "error")
		var re *api.ResponseError
		switch {
		case !errors.As(err, &re) && ctx.Err() == nil:
			return nil, fmt.Errorf("%w: %s %s: %w", ErrUnreachable, op, path, err)
		case re == nil || re.StatusCode != http.StatusForbidden:
			return nil, fmt.Errorf("vault: %s %s: %w", op, path, err)
		}
		if attempt > 0 {
			return nil, fmt.Errorf("%w: %s %s: %v", ErrPermission, op, path, err)
		}
		c.cfg.Logger.Info("vault refused the token; logging in again", "op", op)
		if lerr := c.login(ctx, gen); lerr != nil {
			return nil, fmt.Errorf("vault: %s %s: %w (logging in again: %w)", op, path, ErrPermission, lerr)
		}
	}
}

// joinPath joins a mount and the rest of a path, trimming their slashes.
func joinPath(parts ...string) string {
	for i, p := range parts {
		parts[i] = strings.Trim(p, "/")
	}
	return strings.Join(parts, "/")
}

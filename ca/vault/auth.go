package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"
)

// Bounds of the wait between failed logins in Run.
const (
	minRetry = 5 * time.Second
	maxRetry = time.Minute
)

// login gets a token by the configured method, unless another caller
// logged in since generation gen (the caller's token was refused; a fresh
// one is already there).
func (c *Client) login(ctx context.Context, gen uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loginGen != gen {
		return nil
	}
	token, ttl, renewable, err := c.authenticate(ctx)
	c.cfg.Metrics.Request("login", map[bool]string{true: "error", false: "ok"}[err != nil])
	if err != nil {
		return err
	}
	c.api.SetToken(token)
	c.loginGen++
	c.renewable = renewable
	c.tokenExp = time.Time{}
	if ttl > 0 {
		c.tokenExp = c.cfg.Clock.Now().Add(ttl)
	}
	c.cfg.Metrics.TokenExpiry(c.tokenExp)
	c.cfg.Logger.Info("logged in to vault", "auth", c.cfg.Auth, "token_ttl", ttl, "renewable", renewable)
	return nil
}

// authenticate runs the configured auth method and returns the token, its
// time to live (0: it does not expire) and whether it can be renewed.
func (c *Client) authenticate(ctx context.Context) (string, time.Duration, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	// Logins go out without a token: the one held may be the expired
	// one being replaced.
	anon, err := c.api.Clone()
	if err != nil {
		return "", 0, false, fmt.Errorf("vault: %w", err)
	}
	anon.ClearToken()
	if c.cfg.Namespace != "" {
		anon.SetNamespace(c.cfg.Namespace)
	}
	switch c.cfg.Auth {
	case AuthAppRole:
		roleID, err := readSecretFile(c.cfg.RoleIDFile, "--vault-approle-role-id-file")
		if err != nil {
			return "", 0, false, err
		}
		secretID, err := readSecretFile(c.cfg.SecretIDFile, "--vault-approle-secret-id-file")
		if err != nil {
			return "", 0, false, err
		}
		return loginResult(anon.Logical().WriteWithContext(ctx, joinPath("auth", c.cfg.AppRoleMount, "login"),
			map[string]any{"role_id": roleID, "secret_id": secretID}))
	case AuthKubernetes:
		jwt, err := readSecretFile(c.cfg.KubernetesTokenFile, "--vault-kubernetes-token-file")
		if err != nil {
			return "", 0, false, err
		}
		return loginResult(anon.Logical().WriteWithContext(ctx, joinPath("auth", c.cfg.KubernetesMount, "login"),
			map[string]any{"role": c.cfg.KubernetesRole, "jwt": jwt}))
	}
	token := os.Getenv(api.EnvVaultToken)
	if c.cfg.TokenFile != "" {
		if token, err = readSecretFile(c.cfg.TokenFile, "--vault-token-file"); err != nil {
			return "", 0, false, err
		}
	}
	if token == "" {
		return "", 0, false, errors.New("vault: token auth needs a token: --vault-token-file or VAULT_TOKEN")
	}
	anon.SetToken(token)
	s, err := anon.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return "", 0, false, loginError(err)
	}
	ttl, err := s.TokenTTL()
	if err != nil {
		return "", 0, false, fmt.Errorf("vault: token lookup: %w", err)
	}
	renewable, _ := s.TokenIsRenewable()
	return token, ttl, renewable, nil
}

func loginResult(s *api.Secret, err error) (string, time.Duration, bool, error) {
	switch {
	case err != nil:
		return "", 0, false, loginError(err)
	case s == nil || s.Auth == nil || s.Auth.ClientToken == "":
		return "", 0, false, errors.New("vault: login answered without a token")
	}
	return s.Auth.ClientToken, time.Duration(s.Auth.LeaseDuration) * time.Second, s.Auth.Renewable, nil
}

// loginError says whether a login failed because Vault refused it or
// because it could not be reached.
func loginError(err error) error {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return fmt.Errorf("vault: login refused (an expired or revoked token, wrong credentials, or a role that does not allow them): %w", err)
	}
	return fmt.Errorf("%w: login: %v", ErrUnreachable, err)
}

// readSecretFile reads a credential file (a token, an ID), trimmed.
func readSecretFile(path, flag string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("vault: %s is required", flag)
	}
	b, err := os.ReadFile(path) // #nosec G304 -- the operator's own credential file
	if err != nil {
		return "", fmt.Errorf("vault: %s: %w", flag, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("vault: %s %s is empty", flag, path)
	}
	return s, nil
}

// Run keeps the token valid until ctx ends: at two thirds of its remaining
// life it renews it, or logs in again when it cannot be renewed (or its
// renewal no longer extends it: its max TTL is near). A client that could
// not log in at start (Vault unreachable) keeps trying. A failed login is
// retried with backoff, from 5 s up to a minute. A token that never expires
// needs nothing.
func (c *Client) Run(ctx context.Context) error {
	var retry time.Duration
	for {
		c.mu.Lock()
		exp, gen := c.tokenExp, c.loginGen
		c.mu.Unlock()
		wait, due := time.Duration(0), true
		switch {
		case retry > 0:
			wait = retry
		case gen == 0: // not logged in: Vault was unreachable at start
			wait = minRetry
		case exp.IsZero():
			wait, due = time.Hour, false // a token that never expires
		default:
			wait = max(exp.Sub(c.cfg.Clock.Now())*2/3, time.Second)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.cfg.Clock.After(wait):
		}
		if !due {
			continue
		}
		err := c.refresh(ctx, gen)
		switch {
		case err == nil:
			retry = 0
		case ctx.Err() != nil:
			return ctx.Err()
		default:
			retry = min(max(2*retry, minRetry), maxRetry)
			c.cfg.Logger.Error("vault token refresh failed; retrying", "err", err, "retry_in", retry)
		}
	}
}

// refresh renews the token of generation gen, or logs in again.
func (c *Client) refresh(ctx context.Context, gen uint64) error {
	c.mu.Lock()
	renewable, exp := c.renewable, c.tokenExp
	c.mu.Unlock()
	if renewable && !exp.IsZero() {
		now := c.cfg.Clock.Now()
		ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
		s, err := c.api.Auth().Token().RenewSelfWithContext(ctx, 0)
		cancel()
		c.cfg.Metrics.Request("renew", map[bool]string{true: "error", false: "ok"}[err != nil])
		if err == nil && s != nil && s.Auth != nil {
			newExp := now.Add(time.Duration(s.Auth.LeaseDuration) * time.Second)
			// Renewed, and not cut short by the max TTL: keep it.
			if newExp.Sub(now) > exp.Sub(now)+time.Second {
				c.mu.Lock()
				if c.loginGen == gen {
					c.tokenExp = newExp
				}
				c.mu.Unlock()
				c.cfg.Metrics.TokenExpiry(newExp)
				return nil
			}
		}
	}
	return c.login(ctx, gen)
}

// jsonNumber reads a number Vault sent as JSON (json.Number, float64 or
// string).
func jsonNumber(v any) (int64, error) {
	switch n := v.(type) {
	case json.Number:
		return n.Int64()
	case float64:
		return int64(n), nil
	case int:
		return int64(n), nil
	case string:
		return json.Number(n).Int64()
	}
	return 0, fmt.Errorf("not a number: %T", v)
}

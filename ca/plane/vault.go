package plane

import (
	"context"
	"errors"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/vault"
	"github.com/meshca/meshca/internal/metrics"
)

// VaultPKIChainFile caches, in the data directory, the chain of Vault's
// PKI issuer, so that meshca restarted while Vault is unreachable still
// knows its parent and signs with its stored intermediate.
const VaultPKIChainFile = "vault-pki-chain.pem"

// VaultPKINextChainFile caches the chain of the issuer staged for a root
// rotation (--vault-pki-next-path) likewise.
const VaultPKINextChainFile = "vault-pki-next-chain.pem"

// caRoot is where the CA's root lives: Config.Parent and NextParent as
// given, or Vault's (Transit keeps a self-signed root's key; PKI is the
// parent), with the Vault client to keep logged in.
type caRoot struct {
	parent ca.Parent
	next   ca.ParentLoader
	keys   ca.RootKeys
	vault  *vault.Client
}

func (c *Config) caRoot(ctx context.Context, reg prometheus.Registerer) (caRoot, error) {
	if !c.Vault.Enabled() {
		return caRoot{parent: c.Parent, next: c.NextParent}, nil
	}
	if c.Parent != nil || c.NextParent != nil {
		return caRoot{}, errors.New("--vault-addr and --cacerts-dir (or --cacerts-next-dir): the root lives in one place; choose one")
	}
	vc := c.Vault
	vc.Clock, vc.Logger, vc.Metrics = c.Clock, c.Logger.With("component", "vault"), metrics.NewVault(reg)
	client, err := vault.New(ctx, vc)
	if err != nil {
		return caRoot{}, err
	}
	if vc.TransitKey != "" {
		if vc.PKINextPath != "" {
			return caRoot{}, errors.New("--vault-pki-next-path stages a PKI parent; a Transit root is rotated by a new version of its key")
		}
		keys, err := client.Transit()
		return caRoot{keys: keys, vault: client}, err
	}
	parent, err := client.PKIParent(ctx, vc.PKIPath, filepath.Join(c.DataDir, VaultPKIChainFile), c.Clock.Now())
	if err != nil {
		return caRoot{}, err
	}
	root := caRoot{parent: parent, vault: client}
	if next := vc.PKINextPath; next != "" {
		root.next = func(ctx context.Context, now time.Time) (ca.Parent, error) {
			return client.PKIParent(ctx, next, filepath.Join(c.DataDir, VaultPKINextChainFile), now)
		}
	}
	return root, nil
}

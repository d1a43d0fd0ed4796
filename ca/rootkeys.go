package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"

	"github.com/meshca/meshca/ca/store"
)

// RootKeys keeps the self-signed root's private key outside meshca's store,
// in a key manager that signs with it and never lets it out (Vault Transit:
// ca/vault). The root's certificate stays in the store, with a reference to
// the key (store.SealedKey Alg Kind(), KeyID the reference). The key signs
// intermediates only: one call per intermediate rotation, never one per
// workload.
type RootKeys interface {
	// Kind names the key manager ("vault-transit"); it is stored as the
	// root key's SealedKey.Alg.
	Kind() string
	// Current returns the key a first root is made with, creating it when
	// the manager has none, and its reference.
	Current(ctx context.Context) (crypto.Signer, string, error)
	// Next makes a new key (or key version) for a root rotation and returns
	// it with its reference.
	Next(ctx context.Context) (crypto.Signer, string, error)
	// Open returns the signer of a stored reference whose public key is
	// pub (the root certificate's). It must not call the manager: a CA
	// restarted while the manager is unreachable still signs leaves with
	// its intermediate. Sign must fail when the manager's signature does
	// not verify with pub.
	Open(ref string, pub crypto.PublicKey) (crypto.Signer, error)
}

// rootKey makes the key of a new self-signed root, with what the store
// keeps of it: in RootKeys when configured (its current key for the first
// root, a new one for a root rotation), else generated here and sealed.
func (a *Authority) rootKey(ctx context.Context, rotation bool) (crypto.Signer, store.SealedKey, error) {
	rk := a.cfg.RootKeys
	if rk == nil {
		key, err := generateKey(a.cfg.KeyType)
		if err != nil {
			return nil, store.SealedKey{}, err
		}
		sealed, err := a.sealer.seal(key)
		return key, sealed, err
	}
	get := rk.Current
	if rotation {
		get = rk.Next
	}
	key, ref, err := get(ctx)
	if err != nil {
		return nil, store.SealedKey{}, fmt.Errorf("ca: root key in %s: %w", rk.Kind(), err)
	}
	return key, store.SealedKey{Alg: rk.Kind(), KeyID: ref}, nil
}

// openRoot opens a stored self-signed root: its key from RootKeys when it
// is kept there, else unsealed from the store.
func (a *Authority) openRoot(k *store.CAKey) (*x509.Certificate, crypto.Signer, error) {
	if k.Key.Alg == sealNone || k.Key.Alg == sealAESGCM {
		return a.openCAKey(k)
	}
	cert, err := x509.ParseCertificate(k.CertDER)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: parse stored root: %w", err)
	}
	rk := a.cfg.RootKeys
	if rk == nil || rk.Kind() != k.Key.Alg {
		return nil, nil, fmt.Errorf("ca: the root's key is kept in %s (%s): start meshca with that key manager configured (--vault-addr)", k.Key.Alg, k.Key.KeyID)
	}
	key, err := rk.Open(k.Key.KeyID, cert.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: root key %s in %s: %w", k.Key.KeyID, rk.Kind(), err)
	}
	return cert, key, nil
}

package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/meshca/meshca/ca/store"
)

// loadOrCreateRoot returns the self-signed root kept in the store, creating
// and storing one if there is none yet.
func (a *Authority) loadOrCreateRoot(ctx context.Context) (Parent, error) {
	st, err := a.cfg.Store.LoadCAState(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
		st = &store.CAState{}
	case err != nil:
		return nil, fmt.Errorf("ca: load CA state: %w", err)
	}
	now := a.cfg.Clock.Now()
	if st.Root != nil {
		cert, key, err := a.openCAKey(st.Root)
		if err != nil {
			return nil, fmt.Errorf("ca: root: %w", err)
		}
		return NewLocalParent(cert, key, nil, []*x509.Certificate{cert}, now)
	}
	key, err := generateKey(a.cfg.KeyType)
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(a.cfg.TrustDomain, "meshca root "+a.cfg.TrustDomain.Name(), key.Public(), now.Add(-a.cfg.Backdate), now.Add(a.cfg.RootTTL), 1)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ca: create root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	sealed, err := a.sealer.seal(key)
	if err != nil {
		return nil, err
	}
	st.Root = &store.CAKey{CertDER: der, Key: sealed}
	if _, err := a.cfg.Store.SaveCAState(ctx, st); err != nil {
		return nil, fmt.Errorf("ca: save new root: %w", err)
	}
	a.cfg.Logger.Info("created self-signed root", "trust_domain", a.cfg.TrustDomain.Name(),
		"serial", cert.SerialNumber.Text(16), "not_after", cert.NotAfter)
	return NewLocalParent(cert, key, nil, []*x509.Certificate{cert}, now)
}

func (a *Authority) openCAKey(k *store.CAKey) (*x509.Certificate, crypto.Signer, error) {
	cert, err := x509.ParseCertificate(k.CertDER)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: parse stored certificate: %w", err)
	}
	key, err := a.sealer.open(k.Key, cert.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

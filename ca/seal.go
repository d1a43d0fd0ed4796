package ca

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"

	"github.com/meshca/meshca/ca/store"
)

// SealStoredKeys seals with kek every CA private key that st holds in clear
// (stored before a KEK was configured), in one compare-and-swap write, and
// returns how many it sealed. It is the explicit step behind `meshca ca
// seal`: with a KEK configured, New refuses clear keys (ErrClearKey) rather
// than trust them, so an operator seals a store only after deciding the
// clear keys are the CA's own. Each key must match its certificate.
func SealStoredKeys(ctx context.Context, st store.Store, kek []byte, log *slog.Logger) (int, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sl, err := newSealer(kek)
	if err != nil {
		return 0, err
	}
	if sl.aead == nil {
		return 0, errors.New("ca: no key-encryption key to seal with")
	}
	state, err := st.LoadCAState(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("ca: load CA state: %w", err)
	}
	unsealed := &sealer{} // opens clear keys only
	n := 0
	keys := []*store.CAKey{state.Root, state.Active, state.Next}
	if rr := state.RootRotation; rr != nil {
		keys = append(keys, rr.NewRoot)
	}
	for _, k := range keys {
		if k == nil || k.Key.Alg != sealNone {
			continue
		}
		cert, err := x509.ParseCertificate(k.CertDER)
		if err != nil {
			return 0, fmt.Errorf("ca: stored CA certificate: %w", err)
		}
		key, err := unsealed.open(k.Key, cert.PublicKey)
		if err != nil {
			return 0, fmt.Errorf("ca: key of %q: %w", cert.Subject.CommonName, err)
		}
		if k.Key, err = sl.seal(key); err != nil {
			return 0, fmt.Errorf("ca: seal key of %q: %w", cert.Subject.CommonName, err)
		}
		log.Info("sealing stored CA key", "subject", cert.Subject.CommonName, "serial", cert.SerialNumber.Text(16))
		n++
	}
	m, err := sealJWTKeys(state.JWTKeys, unsealed, sl, log)
	if err != nil {
		return 0, err
	}
	n += m
	if n == 0 {
		return 0, nil
	}
	if _, err := st.SaveCAState(ctx, state); err != nil {
		return 0, fmt.Errorf("ca: save sealed keys: %w", err)
	}
	log.Warn("sealed stored CA keys with the key-encryption key", "count", n)
	return n, nil
}

// sealJWTKeys seals the JWT signing keys of k held in clear, as
// SealStoredKeys does the CA keys, and returns how many it sealed.
func sealJWTKeys(k *store.JWTKeys, unsealed, sl *sealer, log *slog.Logger) (int, error) {
	if k == nil {
		return 0, nil
	}
	n := 0
	for _, j := range []*store.JWTKey{k.Active, k.Next} {
		if j == nil || j.Key.Alg != sealNone {
			continue
		}
		pub, err := x509.ParsePKIXPublicKey(j.PublicKeyDER)
		if err != nil {
			return 0, fmt.Errorf("ca: stored JWT key %q: %w", j.ID, err)
		}
		key, err := unsealed.open(j.Key, pub)
		if err != nil {
			return 0, fmt.Errorf("ca: JWT key %q: %w", j.ID, err)
		}
		if j.Key, err = sl.seal(key); err != nil {
			return 0, fmt.Errorf("ca: seal JWT key %q: %w", j.ID, err)
		}
		log.Info("sealing stored JWT signing key", "kid", j.ID)
		n++
	}
	return n, nil
}

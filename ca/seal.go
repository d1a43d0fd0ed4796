package ca

import (
	"context"
	"errors"
	"fmt"

	"github.com/meshca/meshca/ca/store"
)

// SealStoredKeys seals, with the configured key-encryption key, every CA
// private key the store holds in clear (stored before a KEK was
// configured), in one compare-and-swap write, and returns how many it
// sealed. It is an explicit step: New opens clear keys but never rewrites
// them. Without a KEK it is an error.
func (a *Authority) SealStoredKeys(ctx context.Context) (int, error) {
	if a.sealer.aead == nil {
		return 0, errors.New("ca: no key-encryption key configured to seal with")
	}
	a.rotateMu.Lock()
	defer a.rotateMu.Unlock()
	st, err := a.cfg.Store.LoadCAState(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return 0, nil
	case err != nil:
		return 0, fmt.Errorf("ca: load CA state: %w", err)
	}
	n := 0
	for _, k := range []*store.CAKey{st.Root, st.Active, st.Next} {
		if k == nil || k.Key.Alg != sealNone {
			continue
		}
		cert, key, err := a.openCAKey(k)
		if err != nil {
			return 0, err
		}
		if k.Key, err = a.sealer.seal(key); err != nil {
			return 0, fmt.Errorf("ca: seal key of %s: %w", cert.Subject.CommonName, err)
		}
		n++
	}
	if n == 0 {
		return 0, nil
	}
	if _, err := a.cfg.Store.SaveCAState(ctx, st); err != nil {
		return 0, fmt.Errorf("ca: save sealed keys: %w", err)
	}
	a.cfg.Logger.Info("sealed stored CA keys with the key-encryption key", "count", n)
	return n, nil
}

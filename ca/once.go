package ca

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/meshca/meshca/ca/store"
)

// SignOnce is Sign for a request that must get one certificate at most,
// however often it is asked and by whichever replica: key names it (a
// Kubernetes PodCertificateRequest's UID, under a prefix of its kind). If
// the store holds an answer for key (given before a crash or a restart, or
// by another replica that shares the store), that answer is returned with
// resent true and nothing is signed; an answer that certifies another
// identity or key than req's is not returned: ErrInvalidCSR. Otherwise
// Sign's pipeline runs, and the issuance record and the answer are
// written in one atomic operation (store.RecordIssuanceOnce); should
// another replica's answer win that race, it is the one returned (resent),
// and the certificate signed here, neither recorded nor handed out, is
// dropped.
//
// An answer is kept as long as its issuance record (Config.Retention after
// the certificate expires).
func (a *Authority) SignOnce(ctx context.Context, key string, req SignRequest) (iss *Issued, resent bool, err error) {
	if key == "" {
		return nil, false, errors.New("ca: sign once: empty request key")
	}
	if iss, err := a.answeredFor(ctx, key, req); !errors.Is(err, store.ErrNotFound) {
		return iss, err == nil, err
	}
	iss, err = a.observedSign(ctx, req, key)
	if errors.Is(err, store.ErrConflict) {
		iss, err = a.answeredFor(ctx, key, req)
		return iss, err == nil, err
	}
	return iss, false, err
}

// answeredFor returns the answer recorded for key (answered) if it
// certifies req's identity and key; an answer for another identity or key
// (the same key used for two requests) is ErrInvalidCSR, not sent.
func (a *Authority) answeredFor(ctx context.Context, key string, req SignRequest) (*Issued, error) {
	iss, err := a.answered(ctx, key)
	if err != nil {
		return nil, err
	}
	_, spki, err := subjectKey(req)
	if err != nil {
		return nil, err
	}
	if iss.Record.SPIFFEID != req.Identity.ID.String() || iss.Record.PublicKeySHA256 != publicKeySHA256(spki) {
		return nil, fmt.Errorf("%w: request %s was answered already, for another identity or key", ErrInvalidCSR, key)
	}
	return iss, nil
}

// answered returns the answer recorded for key, or an error matching
// store.ErrNotFound.
func (a *Authority) answered(ctx context.Context, key string) (*Issued, error) {
	ans, err := a.cfg.Store.IssuedRequest(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("%w: reading the answer to %s: %w", ErrUnavailable, key, err)
	}
	var block *pem.Block
	if len(ans.ChainPEM) > 0 { // checked when written; a damaged store must not panic the CA
		block, _ = pem.Decode([]byte(ans.ChainPEM[0]))
	}
	if block == nil {
		return nil, fmt.Errorf("ca: the answer recorded for %s holds no certificate", key)
	}
	iss := &Issued{DER: block.Bytes, ChainPEM: ans.ChainPEM}
	rec, err := a.cfg.Store.Issuance(ctx, ans.Serial)
	if err != nil {
		return nil, fmt.Errorf("%w: reading the record of %s: %w", ErrUnavailable, ans.Serial, err)
	}
	iss.Record = *rec
	return iss, nil
}

// record writes the issuance record, with the answer to request key once
// when it is set.
func (a *Authority) record(ctx context.Context, rec store.Issuance, once string, chain []string) error {
	var err error
	if once == "" {
		err = a.cfg.Store.RecordIssuance(ctx, rec)
	} else if err = a.cfg.Store.RecordIssuanceOnce(ctx, rec, store.IssuedRequest{Request: once, Serial: rec.Serial, ChainPEM: chain}); errors.Is(err, store.ErrConflict) {
		return err // answered meanwhile, by another replica
	}
	if err := a.health.observe(err); err != nil {
		return fmt.Errorf("%w: recording the issuance failed: %w", ErrUnavailable, err)
	}
	return nil
}

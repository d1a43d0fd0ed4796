package ca

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/meshca/meshca/ca/store"
)

// Status is the CA's roots, intermediates and rotations as `meshca ca
// status` shows them (GET /v1/admin/ca). Its JSON field names are a
// contract, listed in docs/configuration.md.
type Status struct {
	TrustDomain string `json:"trust_domain"`
	// Mode is "intermediate" (meshca's rotating intermediate signs leaves)
	// or "direct" (the parent's certificate does: Istio's pathlen-0
	// ca-cert.pem).
	Mode string `json:"mode"`
	// Roots are the roots trusted now, then those a completed rotation
	// retired. State is "active" (the signing chain ends at it),
	// "trusted" (another root of the parent's files), "next" (published by
	// a prepared rotation), "old" (being retired by a switched rotation)
	// or "retired".
	Roots []CertStatus `json:"roots"`
	// Parent is the certificate that signs intermediates (in direct mode,
	// leaves) when it is not a root: a cacerts ca-cert.pem.
	Parent *CertStatus `json:"parent,omitempty"`
	// Intermediates are meshca's own (with several replicas, each
	// replica's, named by Replica): State is "active", "next"
	// (prepared, activated at next_intermediate_rotation), "cross-signed"
	// (the active or next one certified by the old root during a
	// cross-signing root rotation), "old" (signed
	// leaves under the old root until a root rotation switched, its key
	// gone; in direct mode the old ca-cert.pem) or "revoked" (by an
	// emergency rotation).
	Intermediates []CertStatus `json:"intermediates"`
	// NextIntermediateRotation is when the next intermediate is prepared
	// or activated; absent in direct mode.
	NextIntermediateRotation time.Time `json:"next_intermediate_rotation,omitzero"`
	// RootRotation is the root rotation in progress or last completed.
	RootRotation *RootRotationStatus `json:"root_rotation,omitempty"`
	// JWTKeys are the JWT-SVID signing keys: State "active", "next"
	// (published, signs from the next rotation) or "retired" (published
	// until the last token it signed expires).
	JWTKeys []JWTKeyStatus `json:"jwt_keys,omitempty"`
	// Federation are the stored bundles of the trust domains the CA
	// federates with (--federation-config).
	Federation []FederatedStatus `json:"federation,omitempty"`
	// LastError is the last failed rotation step, retried with backoff, at most a minute apart.
	LastError string `json:"last_error,omitempty"`
	// Now is the server's time.
	Now time.Time `json:"now"`
}

// CertStatus is one CA certificate.
type CertStatus struct {
	State             string    `json:"state"`
	Subject           string    `json:"subject"`
	Serial            string    `json:"serial"`
	FingerprintSHA256 string    `json:"fingerprint_sha256"`
	NotBefore         time.Time `json:"not_before"`
	NotAfter          time.Time `json:"not_after"`
	// Replica names the replica that holds an intermediate, when several
	// share the store.
	Replica string `json:"replica,omitempty"`
	// Key says where a root's private key is, for a root meshca made:
	// "store" (sealed in the data file) or "vault-transit:<mount>/keys/
	// <name>:v<version>"; absent for a root it was given (cacerts, Vault
	// PKI: the key is where that root lives).
	Key string `json:"key,omitempty"`
	// RevokedAt and Reason are those of a revoked intermediate.
	RevokedAt time.Time `json:"revoked_at,omitzero"`
	Reason    string    `json:"reason,omitempty"`
}

// JWTKeyStatus is one JWT-SVID signing key.
type JWTKeyStatus struct {
	State string `json:"state"`
	// Replica holds the key, when several replicas share the store.
	Replica   string    `json:"replica,omitempty"`
	KeyID     string    `json:"kid"`
	NotBefore time.Time `json:"not_before"`
	// SignsFrom is when a replica's new key starts signing, after its
	// publication; absent when it signed from NotBefore.
	SignsFrom time.Time `json:"signs_from,omitzero"`
	// NotAfter is when the key stops being published.
	NotAfter time.Time `json:"not_after"`
}

// RootRotationStatus is a root rotation's phase and the time of each step.
type RootRotationStatus struct {
	// Phase is "prepared", "switched" or "completed".
	Phase       string    `json:"phase"`
	PreparedAt  time.Time `json:"prepared_at"`
	SwitchAfter time.Time `json:"switch_after"`
	SwitchedAt  time.Time `json:"switched_at,omitzero"`
	// RetireAfter is when the last leaf under the old root expires;
	// absent until it is known, NextStepAt after the switch.
	RetireAfter time.Time `json:"retire_after,omitzero"`
	CompletedAt time.Time `json:"completed_at,omitzero"`
	// NextStep is what happens next: "switch", "find_last_old_leaf" or
	// "complete"; absent once completed. NextStepAt is when.
	NextStep   string    `json:"next_step,omitempty"`
	NextStepAt time.Time `json:"next_step_at,omitzero"`
	// CrossSign says that intermediates made from the switch until
	// completion are certified by the old root too.
	CrossSign bool `json:"cross_sign,omitempty"`
}

func newRootOf(rr *store.RootRotation) *store.CAKey {
	if rr == nil {
		return nil
	}
	return rr.NewRoot
}

// Status reports the CA's state, read from the store.
func (a *Authority) Status(ctx context.Context) (*Status, error) {
	st, err := a.cfg.Store.LoadCAState(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
		st = &store.CAState{}
	case err != nil:
		return nil, fmt.Errorf("ca: load CA state: %w", err)
	}
	tr := a.trust.Load()
	out := &Status{TrustDomain: a.cfg.TrustDomain.Name(), Mode: "intermediate", Now: a.cfg.Clock.Now(),
		Roots: []CertStatus{}, Intermediates: []CertStatus{}}
	if tr.direct {
		out.Mode = "direct"
	} else {
		out.NextIntermediateRotation = a.nextIntermediateRotation()
	}
	if p := tr.parent.Certificate(); !p.Equal(tr.parent.Anchor()) {
		cs := CertStatusOf("active", p)
		out.Parent = &cs
	}
	rr := st.RootRotation
	for _, r := range tr.bundle.X509Authorities() {
		state := "trusted"
		switch {
		case r.Equal(tr.parent.Anchor()):
			state = "active"
		case rr != nil && rr.Phase == store.PhasePrepared && hasRoot(rr.NewRoots, r) && !hasRoot(rr.OldRoots, r):
			state = "next"
		case rr != nil && rr.Phase == store.PhaseSwitched && hasRoot(rr.OldRoots, r) && !hasRoot(rr.NewRoots, r):
			state = "old"
		}
		cs := CertStatusOf(state, r)
		for _, k := range []*store.CAKey{st.Root, newRootOf(rr)} {
			if k != nil && bytes.Equal(k.CertDER, r.Raw) {
				cs.Key = keyPlace(k.Key)
			}
		}
		out.Roots = append(out.Roots, cs)
	}
	if rr != nil {
		if rr.Phase == store.PhaseCompleted {
			out.Roots = appendDER(out.Roots, "retired", rr.OldRoots, func(c *x509.Certificate) bool {
				return !slices.ContainsFunc(tr.bundle.X509Authorities(), c.Equal)
			})
		}
		out.RootRotation = rootRotationStatus(rr)
	}
	for _, r := range st.ReplicaIntermediates {
		if c, err := x509.ParseCertificate(r.CertDER); err == nil && !tr.direct {
			cs := CertStatusOf(r.State, c)
			cs.Replica = r.Replica
			out.Intermediates = append(out.Intermediates, cs)
		}
	}
	if !tr.direct {
		out.Intermediates = appendDER(out.Intermediates, "active", [][]byte{keyCert(st.Active)}, nil)
		out.Intermediates = appendDER(out.Intermediates, "next", [][]byte{keyCert(st.Next)}, nil)
		for _, k := range []*store.CAKey{st.Active, st.Next} {
			if k != nil && k.CrossCertDER != nil {
				out.Intermediates = appendDER(out.Intermediates, "cross-signed", [][]byte{k.CrossCertDER}, nil)
			}
		}
	}
	if rr != nil && rr.Phase == store.PhaseSwitched {
		out.Intermediates = appendDER(out.Intermediates, "old", [][]byte{rr.OldSigner}, nil)
	}
	for _, rc := range st.RevokedIntermediates {
		if c, err := x509.ParseCertificate(rc.CertDER); err == nil {
			cs := CertStatusOf("revoked", c)
			cs.RevokedAt, cs.Reason = rc.RevokedAt, rc.Reason
			out.Intermediates = append(out.Intermediates, cs)
		}
	}
	addJWT := func(state, replica string, j *store.JWTKey) {
		if j != nil {
			out.JWTKeys = append(out.JWTKeys, JWTKeyStatus{State: state, Replica: replica, KeyID: j.ID, NotBefore: j.NotBefore,
				SignsFrom: j.SignsFrom, NotAfter: j.NotAfter})
		}
	}
	if k := st.JWTKeys; k != nil {
		addJWT("active", "", k.Active)
		addJWT("next", "", k.Next)
		for i := range k.Retired {
			addJWT("retired", "", &k.Retired[i])
		}
	}
	for i := range st.ReplicaJWTKeys {
		r := &st.ReplicaJWTKeys[i]
		addJWT(r.State, r.Replica, &r.JWTKey)
	}
	if out.Federation, err = federatedStatus(ctx, a.cfg.Store); err != nil {
		return nil, err
	}
	if msg := a.lastErr.Load(); msg != nil {
		out.LastError = *msg
	}
	return out, nil
}

func (a *Authority) nextIntermediateRotation() time.Time {
	s := a.active.Load()
	if a.nextPrepared.Load() {
		return ActivateTime(s.cert)
	}
	return PrepareTime(s.cert)
}

func rootRotationStatus(rr *store.RootRotation) *RootRotationStatus {
	s := &RootRotationStatus{Phase: rr.Phase, PreparedAt: rr.PreparedAt, SwitchAfter: rr.SwitchAfter, SwitchedAt: rr.SwitchedAt,
		RetireAfter: rr.RetireAfter, CompletedAt: rr.CompletedAt, NextStepAt: rootStepTime(rr), CrossSign: rr.CrossSign}
	switch {
	case rr.Phase == store.PhasePrepared:
		s.NextStep = "switch"
	case rr.Phase == store.PhaseSwitched && rr.RetireAfter.IsZero():
		s.NextStep = "find_last_old_leaf"
	case rr.Phase == store.PhaseSwitched:
		s.NextStep = "complete"
	}
	return s
}

// CertStatusOf describes c in state.
func CertStatusOf(state string, c *x509.Certificate) CertStatus {
	return CertStatus{State: state, Subject: c.Subject.String(), Serial: c.SerialNumber.Text(16), FingerprintSHA256: Fingerprint(c),
		NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC()}
}

// appendDER appends the certificates of ders (nil ones skipped) that keep
// accepts (nil: all) with state.
func appendDER(out []CertStatus, state string, ders [][]byte, keep func(*x509.Certificate) bool) []CertStatus {
	for _, d := range ders {
		if d == nil {
			continue
		}
		if c, err := x509.ParseCertificate(d); err == nil && (keep == nil || keep(c)) {
			out = append(out, CertStatusOf(state, c))
		}
	}
	return out
}

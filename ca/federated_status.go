package ca

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/federation/fedbundle"
	"github.com/meshca/meshca/ca/store"
)

// FederatedStatus is the stored bundle of a trust domain the CA federates
// with (ca/federation), as `meshca ca status` shows it.
type FederatedStatus struct {
	TrustDomain string `json:"trust_domain"`
	// Source is where it came from: "endpoint", "file" or "bootstrap".
	Source string `json:"source"`
	// RefreshedAt is when it was last fetched (or read) and found good;
	// ChangedAt when its authorities last changed.
	RefreshedAt time.Time `json:"refreshed_at"`
	ChangedAt   time.Time `json:"changed_at"`
	// Sequence is its spiffe_sequence; absent when it has none.
	Sequence uint64 `json:"sequence,omitempty"`
	// X509Authorities are its roots (State "trusted"); JWTKeyIDs the key
	// IDs of its JWT authorities.
	X509Authorities []CertStatus `json:"x509_authorities"`
	JWTKeyIDs       []string     `json:"jwt_key_ids,omitempty"`
	// Error says why a stored bundle cannot be read, or is refused as a
	// fetched one would be (fedbundle.Parse): it is not served.
	Error string `json:"error,omitempty"`
}

// federatedStatus describes the federated bundles in st.
func federatedStatus(ctx context.Context, st store.Store) ([]FederatedStatus, error) {
	recs, err := st.FederatedBundles(ctx)
	if err != nil {
		return nil, fmt.Errorf("ca: federated bundles: %w", err)
	}
	var out []FederatedStatus
	for _, rec := range recs {
		fs := FederatedStatus{TrustDomain: rec.TrustDomain, Source: rec.Source, RefreshedAt: rec.RefreshedAt, ChangedAt: rec.ChangedAt,
			X509Authorities: []CertStatus{}}
		b, err := parseFederated(rec)
		if err != nil {
			fs.Error = err.Error()
			out = append(out, fs)
			continue
		}
		fs.Sequence, _ = b.SequenceNumber()
		for _, c := range b.X509Authorities() {
			fs.X509Authorities = append(fs.X509Authorities, CertStatusOf("trusted", c))
		}
		fs.JWTKeyIDs = slices.Sorted(maps.Keys(b.JWTAuthorities()))
		out = append(out, fs)
	}
	return out, nil
}

// parseFederated reads a stored bundle as the federation does before it
// serves it, so that Error is set exactly for those it leaves out.
func parseFederated(rec store.FederatedBundle) (*spiffebundle.Bundle, error) {
	td, err := spiffeid.TrustDomainFromString(rec.TrustDomain)
	if err != nil {
		return nil, err
	}
	return fedbundle.Parse(td, rec.Bundle)
}

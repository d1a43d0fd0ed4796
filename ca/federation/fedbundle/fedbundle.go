// Package fedbundle parses a federated trust domain's SPIFFE bundle and
// checks it as meshca holds every one, wherever it comes from: a peer's
// endpoint, a file, the store. It imports nothing of meshca, so the CA
// (`meshca ca status`) and the federation share it without the CA
// depending on the federation's fetcher.
package fedbundle

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Parse parses a bundle document of td and checks it as every bundle the
// federation serves is checked (check): what a fetch, a file and the store
// are held to, and what `meshca ca status` reports by.
func Parse(td spiffeid.TrustDomain, data []byte) (*spiffebundle.Bundle, error) {
	b, err := spiffebundle.Parse(td, data)
	if err != nil {
		return nil, fmt.Errorf("federation: %s: %w", td.Name(), err)
	}
	if err := check(td, b); err != nil {
		return nil, err
	}
	return b, nil
}

// check refuses a bundle of td without X.509 authorities (it would take
// every X.509 trust in td away: a mesh verifies peers by them), or with an
// authority whose SPIFFE ID is in another trust domain (the bundle is
// another trust domain's: meshca's roots, and SPIRE's, name their own).
func check(td spiffeid.TrustDomain, b *spiffebundle.Bundle) error {
	auths := b.X509Authorities()
	if len(auths) == 0 {
		return fmt.Errorf("federation: %s: the bundle has no X.509 authorities", td.Name())
	}
	for _, c := range auths {
		for _, u := range c.URIs {
			if u.Scheme != "spiffe" {
				continue
			}
			if id, err := spiffeid.FromURI(u); err == nil && !id.MemberOf(td) {
				return fmt.Errorf("federation: %s: the bundle is for trust domain %s (an X.509 authority, %q, names %s)",
					td.Name(), id.TrustDomain().Name(), c.Subject.String(), id)
			}
		}
	}
	return nil
}

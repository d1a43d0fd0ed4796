package federation

import (
	"fmt"
	"net/url"
	"os"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/meshca/meshca/ca/bundle"
)

// File is the --federation-config file: the foreign trust domains the CA
// federates with, each with where its bundle comes from. It reads as
// SPIRE's federates_with blocks do:
//
//	trust_domains:
//	- trust_domain: b.example
//	  bundle_endpoint_url: https://meshca.b.example:8443/
//	  bundle_endpoint_profile: https_spiffe
//	  endpoint_spiffe_id: spiffe://b.example/meshca/bundle-endpoint
//	  bundle_file: /etc/meshca/federation/b.example.json # bootstrap
//	- trust_domain: c.example
//	  bundle_endpoint_url: https://spiffe.c.example/bundle
//	  bundle_endpoint_profile: https_web
//	- trust_domain: d.example
//	  bundle_file: /etc/meshca/federation/d.example.json # static
type File struct {
	TrustDomains []TrustDomainConfig `json:"trust_domains"`
}

// TrustDomainConfig is one foreign trust domain. Its bundle comes from a
// SPIFFE bundle endpoint (BundleEndpointURL with a profile), or from a
// static bundle file alone.
type TrustDomainConfig struct {
	// TrustDomain is the foreign trust domain's name ("b.example"). It
	// may not be the CA's own, nor appear twice.
	TrustDomain string `json:"trust_domain"`
	// BundleEndpointURL is the https:// URL of its SPIFFE bundle endpoint.
	BundleEndpointURL string `json:"bundle_endpoint_url,omitempty"`
	// BundleEndpointProfile says how the endpoint is authenticated:
	// https_web (its certificate verified with the system's roots, or
	// CAFile's) or https_spiffe (an X509-SVID for EndpointSPIFFEID,
	// verified with the current bundle of that ID's trust domain).
	// Required with BundleEndpointURL.
	BundleEndpointProfile string `json:"bundle_endpoint_profile,omitempty"`
	// EndpointSPIFFEID is the https_spiffe endpoint's SPIFFE ID: in the
	// foreign trust domain (BundleFile then bootstraps it), in the CA's
	// own, or in another federated trust domain.
	EndpointSPIFFEID string `json:"endpoint_spiffe_id,omitempty"`
	// BundleFile is a SPIFFE bundle document (JSON): with https_spiffe,
	// the bundle trusted until the first fetch succeeds (read at start);
	// without an endpoint, the trust domain's bundle itself, read again
	// whenever the file changes.
	BundleFile string `json:"bundle_file,omitempty"`
	// CAFile is a PEM file of roots that verify an https_web endpoint
	// instead of the system's.
	CAFile string `json:"ca_file,omitempty"`
}

// Peer is a checked TrustDomainConfig.
type Peer struct {
	TrustDomainConfig
	// ID is the trust domain; EndpointID the https_spiffe endpoint's
	// SPIFFE ID (zero otherwise).
	ID         spiffeid.TrustDomain
	EndpointID spiffeid.ID
}

// Static reports whether the bundle comes from BundleFile alone.
func (p *Peer) Static() bool { return p.BundleEndpointURL == "" }

// LoadFile reads and checks a --federation-config file for a CA of trust
// domain own.
func LoadFile(path string, own spiffeid.TrustDomain) ([]Peer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("federation: %w", err)
	}
	peers, err := Parse(b, own)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return peers, nil
}

// Parse checks a --federation-config document for a CA of trust domain
// own. Unknown fields are errors; so is anything a trust domain's entry
// does not need for where its bundle comes from (an endpoint SPIFFE ID
// for https_web, a CA file for https_spiffe), rather than something
// silently ignored.
func Parse(data []byte, own spiffeid.TrustDomain) ([]Peer, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("federation: %w", err)
	}
	seen := map[spiffeid.TrustDomain]bool{}
	peers := make([]Peer, 0, len(f.TrustDomains))
	for i, c := range f.TrustDomains {
		p, err := checkEntry(c, own)
		if err != nil {
			return nil, fmt.Errorf("federation: trust_domains[%d]: %w", i, err)
		}
		if seen[p.ID] {
			return nil, fmt.Errorf("federation: trust_domains[%d]: %s is listed twice", i, p.ID.Name())
		}
		seen[p.ID] = true
		peers = append(peers, p)
	}
	for _, p := range peers {
		if e := p.EndpointID.TrustDomain(); !p.EndpointID.IsZero() && e != own && !seen[e] {
			return nil, fmt.Errorf("federation: %s: the endpoint's SPIFFE ID %s is in %s, whose bundle this CA does not have: list that trust domain too", p.ID.Name(), p.EndpointID, e.Name())
		}
	}
	return peers, nil
}

// checkEntry checks one entry.
func checkEntry(c TrustDomainConfig, own spiffeid.TrustDomain) (Peer, error) {
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil {
		return Peer{}, fmt.Errorf("trust_domain %q: %w", c.TrustDomain, err)
	}
	if td == own {
		return Peer{}, fmt.Errorf("trust_domain %s is this CA's own", td.Name())
	}
	c.TrustDomain = td.Name() // "spiffe://b.example" is accepted as "b.example"
	p := Peer{TrustDomainConfig: c, ID: td}
	if c.BundleEndpointURL == "" {
		switch {
		case c.BundleFile == "":
			return Peer{}, fmt.Errorf("%s: give a bundle_endpoint_url, or a static bundle_file", td.Name())
		case c.BundleEndpointProfile != "" || c.EndpointSPIFFEID != "" || c.CAFile != "":
			return Peer{}, fmt.Errorf("%s: bundle_endpoint_profile, endpoint_spiffe_id and ca_file need a bundle_endpoint_url", td.Name())
		}
		return p, nil
	}
	if err := checkURL(c.BundleEndpointURL); err != nil {
		return Peer{}, fmt.Errorf("%s: bundle_endpoint_url: %w", td.Name(), err)
	}
	switch c.BundleEndpointProfile {
	case bundle.ProfileWeb:
		if c.EndpointSPIFFEID != "" || c.BundleFile != "" {
			return Peer{}, fmt.Errorf("%s: endpoint_spiffe_id and bundle_file are for https_spiffe; https_web is verified with web PKI roots (ca_file, or the system's)", td.Name())
		}
	case bundle.ProfileSPIFFE:
		if c.CAFile != "" {
			return Peer{}, fmt.Errorf("%s: ca_file is for https_web; https_spiffe is verified with a bundle (bundle_file bootstraps it)", td.Name())
		}
		if p.EndpointID, err = spiffeid.FromString(c.EndpointSPIFFEID); err != nil {
			return Peer{}, fmt.Errorf("%s: https_spiffe needs endpoint_spiffe_id, the endpoint's SPIFFE ID: %w", td.Name(), err)
		}
		if p.EndpointID.MemberOf(td) && c.BundleFile == "" {
			return Peer{}, fmt.Errorf("%s: the endpoint's SPIFFE ID is in %s itself: give its bundle_file to trust for the first fetch", td.Name(), td.Name())
		}
	default:
		return Peer{}, fmt.Errorf("%s: bundle_endpoint_profile %q: want %s or %s", td.Name(), c.BundleEndpointProfile, bundle.ProfileWeb, bundle.ProfileSPIFFE)
	}
	return p, nil
}

// checkURL accepts an absolute https URL with a host and no user
// information or fragment.
func checkURL(raw string) error {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return err
	case u.Scheme != "https":
		return fmt.Errorf("%q: the bundle endpoint is served over https only", raw)
	case u.Host == "" || u.Hostname() == "":
		return fmt.Errorf("%q has no host", raw)
	case u.User != nil:
		return fmt.Errorf("%q carries user information", raw)
	case u.Fragment != "" || u.RawFragment != "":
		return fmt.Errorf("%q has a fragment", raw)
	}
	return nil
}

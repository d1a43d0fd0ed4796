package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/ca/federation/fedbundle"
	"github.com/meshca/meshca/internal/pki"
)

// newPeer reads p's files and builds its HTTP client.
func (f *Federation) newPeer(p Peer) (*peer, error) {
	out := &peer{Peer: p, refresh: f.interval(0)}
	if p.BundleFile != "" {
		b, err := f.readBundle(p.ID, p.BundleFile)
		if err != nil {
			return nil, err
		}
		if !p.Static() {
			out.bootstrap = b
		}
	}
	if p.Static() {
		return out, nil
	}
	var tlsCfg *tls.Config
	switch p.BundleEndpointProfile {
	case bundle.ProfileWeb:
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
		if p.CAFile != "" {
			roots, err := pki.ReadCertificates(p.CAFile)
			if err != nil {
				return nil, fmt.Errorf("federation: %s: ca_file: %w", p.ID.Name(), err)
			}
			tlsCfg.RootCAs = x509.NewCertPool()
			for _, r := range roots {
				tlsCfg.RootCAs.AddCert(r)
			}
		}
	case bundle.ProfileSPIFFE:
		tlsCfg = tlsconfig.TLSClientConfig(bundleSource(f.endpointTrust), tlsconfig.AuthorizeID(p.EndpointID))
		tlsCfg.MinVersion = tls.VersionTLS12
	}
	out.client = &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			TLSClientConfig:       tlsCfg,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: f.cfg.Timeout,
			MaxIdleConns:          1,
			IdleConnTimeout:       90 * time.Second,
			ForceAttemptHTTP2:     true,
		},
		// A bundle endpoint answers at its URL: a redirect elsewhere is
		// refused rather than followed past what the config names.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return out, nil
}

// bundleSource is an x509bundle.Source made of a function.
type bundleSource func(spiffeid.TrustDomain) (*x509bundle.Bundle, error)

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s bundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s(td)
}

// endpointTrust is the bundle that verifies an https_spiffe endpoint in
// td: the CA's own roots, or td's current bundle, or before there is one
// its bootstrap bundle.
func (f *Federation) endpointTrust(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td == f.cfg.TrustDomain {
		return x509bundle.FromX509Authorities(td, f.cfg.Roots()), nil
	}
	if e := f.get(td); e != nil {
		return e.bundle.X509Bundle(), nil
	}
	for _, p := range f.peers {
		if p.ID == td && p.bootstrap != nil {
			return p.bootstrap.X509Bundle(), nil
		}
	}
	return nil, fmt.Errorf("federation: no bundle of %s to verify its endpoint with", td.Name())
}

// fetch GETs p's bundle endpoint: a 200 answer of at most MaxBundleSize
// bytes, within Timeout.
func (f *Federation) fetch(ctx context.Context, p *peer) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.BundleEndpointURL, nil)
	if err != nil {
		return nil, fmt.Errorf("federation: %s: %w", p.ID.Name(), err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("federation: %s: %w", p.ID.Name(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("federation: %s: GET %s answered %s", p.ID.Name(), p.BundleEndpointURL, resp.Status)
	}
	data, err := readLimited(resp.Body, f.cfg.MaxBundleSize)
	if err != nil {
		return nil, fmt.Errorf("federation: %s: GET %s: %w", p.ID.Name(), p.BundleEndpointURL, err)
	}
	return data, nil
}

// readBundle reads and checks td's bundle file.
func (f *Federation) readBundle(td spiffeid.TrustDomain, path string) (*spiffebundle.Bundle, error) {
	data, err := readFile(path, f.cfg.MaxBundleSize)
	if err != nil {
		return nil, fmt.Errorf("federation: %s: %w", td.Name(), err)
	}
	b, err := fedbundle.Parse(td, data)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return b, nil
}

func readFile(path string, limit int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = fh.Close() }() // read only: nothing to lose
	return readLimited(fh, limit)
}

func readLimited(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("the bundle is larger than %d bytes", limit)
	}
	return data, nil
}

package endpoint

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/files"
	"github.com/meshca/meshca/internal/pki"
)

// SVIDIssuer issues the https_spiffe endpoint's X509-SVIDs. The plane
// implements it with the CA's own signing (ca.Authority.Sign), so the SVID
// is recorded in the issuance log like any other.
type SVIDIssuer interface {
	// IssueSVID signs csr (PEM), which asks for id, and returns the chain,
	// leaf first.
	IssueSVID(ctx context.Context, id spiffeid.ID, csr []byte) ([]*x509.Certificate, error)
}

// Bounds of the https_spiffe SVID's issuance.
const (
	issueTimeout = 10 * time.Second
	// issueRetry is how long a failed issuance waits before the next
	// handshake tries again, while the current SVID is still valid.
	issueRetry = time.Minute
)

// svidCert is the https_spiffe serving certificate: an SVID for id, issued
// when first needed and again once half its lifetime has passed, during
// the handshake that finds it due.
type svidCert struct {
	issuer SVIDIssuer
	id     spiffeid.ID
	clock  clock.Clock
	log    *slog.Logger

	mu      sync.Mutex
	cur     *tls.Certificate
	renewAt time.Time
}

func (c *svidCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock.Now()
	if c.cur != nil && now.Before(c.renewAt) {
		return c.cur, nil
	}
	next, err := c.issue()
	if err != nil {
		if c.cur != nil && now.Before(c.cur.Leaf.NotAfter) {
			c.log.Warn("bundle endpoint: renewing its SVID failed; serving the current one", "not_after", c.cur.Leaf.NotAfter, "err", err)
			c.renewAt = now.Add(issueRetry)
			return c.cur, nil
		}
		return nil, err
	}
	leaf := next.Leaf
	c.cur, c.renewAt = next, leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore)/2)
	c.log.Info("bundle endpoint: SVID issued", "spiffe_id", c.id.String(), "not_after", leaf.NotAfter)
	return next, nil
}

func (c *svidCert) issue() (*tls.Certificate, error) {
	key, err := pki.GenerateKey(pki.KeyECDSAP256)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{c.id.URL()}}, key)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), issueTimeout)
	defer cancel()
	chain, err := c.issuer.IssueSVID(ctx, c.id, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	if err != nil {
		return nil, fmt.Errorf("issue SVID: %w", err)
	}
	if len(chain) == 0 || !pki.SamePublicKey(chain[0].PublicKey, key.Public()) {
		return nil, errors.New("issue SVID: the chain's leaf is not for the key sent")
	}
	if len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != c.id.String() {
		return nil, fmt.Errorf("issue SVID: the leaf is not for %s", c.id)
	}
	out := &tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, cert := range chain {
		out.Certificate = append(out.Certificate, cert.Raw)
	}
	return out, nil
}

// fileCert is the https_web serving certificate, read from files (the key
// readable by its owner and group only) and read again, during a handshake at most every `every`, when either file's size
// or modification time has changed (a Secret volume's update replaces
// both). A pair that fails to load (a write half done, a key that does not
// match) leaves the current certificate in place and is tried again at the
// next check.
type fileCert struct {
	certFile, keyFile string
	every             time.Duration
	clock             clock.Clock
	log               *slog.Logger

	mu      sync.Mutex
	cur     *tls.Certificate
	stamp   [2]fileStamp
	checked time.Time
}

type fileStamp struct {
	size    int64
	modTime time.Time
}

func (c *fileCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock.Now()
	if c.cur != nil && now.Sub(c.checked) < c.every {
		return c.cur, nil
	}
	c.checked = now
	var stamp [2]fileStamp
	for i, path := range []string{c.certFile, c.keyFile} {
		fi, err := os.Stat(path)
		if err != nil {
			return c.keep(err)
		}
		stamp[i] = fileStamp{size: fi.Size(), modTime: fi.ModTime()}
	}
	if c.cur != nil && stamp == c.stamp {
		return c.cur, nil
	}
	if err := files.CheckSecretMode(c.keyFile); err != nil {
		return c.keep(err)
	}
	next, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return c.keep(err)
	}
	if c.cur != nil {
		c.log.Info("bundle endpoint: serving certificate reloaded", "file", c.certFile, "not_after", next.Leaf.NotAfter)
	}
	c.cur, c.stamp = &next, stamp
	return c.cur, nil
}

// keep answers a failed load: the current certificate if there is one.
func (c *fileCert) keep(err error) (*tls.Certificate, error) {
	if c.cur == nil {
		return nil, err
	}
	c.log.Warn("bundle endpoint: reading the serving certificate failed; serving the current one", "err", err)
	return c.cur, nil
}

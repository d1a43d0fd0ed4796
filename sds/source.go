package sds

import (
	"crypto"
	"crypto/x509"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SVID is a workload's identity material at one moment. It is immutable:
// a rotation publishes a new SVID.
type SVID struct {
	// ID is the SPIFFE ID in the certificate.
	ID spiffeid.ID
	// Certificates is the leaf first, then intermediates (no root).
	Certificates []*x509.Certificate
	// Key is the leaf's private key; it never leaves this machine except to
	// the workload's own Envoy or Workload API client over a local socket.
	Key crypto.Signer
	// Roots are the trust anchors of the trust domain.
	Roots []*x509.Certificate
	// Federated are the bundles of the foreign trust domains the CA
	// federates with, by trust domain (never ID's own); nil when none.
	// Shared between SVIDs: never changed, replaced as a whole.
	Federated map[spiffeid.TrustDomain]*spiffebundle.Bundle
	// Version increases by one on every change (rotation, new roots, new
	// federated bundles).
	Version uint64
}

// NotAfter is the leaf's expiry.
func (s *SVID) NotAfter() time.Time { return s.Certificates[0].NotAfter }

// Source gives the current SVID and says when it changes. The servers take
// a Source; the Manager is one, and tests use a StaticSource.
type Source interface {
	// Current returns the SVID now, or nil before the first one.
	Current() *SVID
	// Subscribe returns a channel that receives a value after every change
	// (changes may be coalesced: a slow reader sees the latest), and a
	// function that ends the subscription.
	Subscribe() (<-chan struct{}, func())
}

// StaticSource is a Source whose SVID is set by hand: for tests and for
// serving material obtained elsewhere.
type StaticSource struct {
	mu   sync.Mutex
	cur  *SVID
	subs map[chan struct{}]struct{}
}

// NewStaticSource returns a source holding s (may be nil).
func NewStaticSource(s *SVID) *StaticSource {
	return &StaticSource{cur: s, subs: map[chan struct{}]struct{}{}}
}

// Current implements Source.
func (s *StaticSource) Current() *SVID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// Set publishes svid and notifies subscribers.
func (s *StaticSource) Set(svid *SVID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur = svid
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default: // a notification is already pending
		}
	}
}

// Subscribe implements Source.
func (s *StaticSource) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}
}

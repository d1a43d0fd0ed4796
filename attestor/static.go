package attestor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// KindDevToken is the credential kind recorded for StaticTokens.
const KindDevToken = "dev-token"

// StaticTokens attests bearer tokens from a fixed table, each bound to one
// SPIFFE ID, like Kubernetes' static token file. It is meant for `meshca dev`
// and tests only: the tokens never expire and cannot be revoked one by one.
type StaticTokens struct {
	ids map[[sha256.Size]byte]spiffeid.ID
}

// NewStaticTokens returns an attestor for the given token → identity table.
// Only hashes of the tokens are kept in memory.
func NewStaticTokens(tokens map[string]spiffeid.ID) *StaticTokens {
	s := &StaticTokens{ids: make(map[[sha256.Size]byte]spiffeid.ID, len(tokens))}
	for tok, id := range tokens {
		s.ids[sha256.Sum256([]byte(tok))] = id
	}
	return s
}

// Attest implements Attestor.
func (s *StaticTokens) Attest(_ context.Context, c Credential) (Identity, error) {
	if c.BearerToken == "" {
		return Identity{}, ErrNoCredential
	}
	sum := sha256.Sum256([]byte(c.BearerToken))
	id, ok := s.ids[sum]
	if !ok {
		return Identity{}, refuse(ErrUnauthenticated, "unknown bearer token")
	}
	// Record a short token fingerprint, never the token itself.
	return Identity{ID: id, Kind: KindDevToken, Subject: "sha256:" + hex.EncodeToString(sum[:8])}, nil
}

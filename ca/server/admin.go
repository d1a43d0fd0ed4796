package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/ca/store"
)

// JoinTokenRequest is the body of POST /v1/admin/join-tokens.
type JoinTokenRequest struct {
	SPIFFEID string `json:"spiffe_id"`
	// TTL is a Go duration; default 1h.
	TTL string `json:"ttl,omitempty"`
}

// JoinTokenResponse answers it. Token is shown this once; only its hash
// is stored.
type JoinTokenResponse struct {
	Token     string    `json:"token"`
	SPIFFEID  string    `json:"spiffe_id"`
	ExpiresAt time.Time `json:"expires_at"`
}

// adminAuth wraps h so it runs only for callers presenting the admin token.
func (s *Server) adminAuth(h http.HandlerFunc) http.HandlerFunc {
	want := sha256.Sum256([]byte(s.cfg.AdminToken))
	return func(w http.ResponseWriter, r *http.Request) {
		if err := s.failures.allow(r.RemoteAddr); err != nil {
			s.reply(w, "admin", nil, err)
			return
		}
		tok, err := bearerToken(r.Header.Values("Authorization"))
		got := sha256.Sum256([]byte(tok))
		if err != nil || tok == "" || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			s.failures.failed(r.RemoteAddr)
			s.metrics.Request("http", "admin", codes.Unauthenticated.String())
			writeJSON(w, http.StatusUnauthorized, ErrorResponse{Error: "admin API: missing or wrong admin token", Code: codes.Unauthenticated.String()})
			return
		}
		h(w, r)
	}
}

func (s *Server) handleCreateJoinToken(w http.ResponseWriter, r *http.Request) {
	resp, err := s.createJoinToken(w, r)
	s.reply(w, "join-tokens", resp, err)
}

func (s *Server) createJoinToken(w http.ResponseWriter, r *http.Request) (*JoinTokenResponse, error) {
	var req JoinTokenRequest
	if err := s.decodeBody(w, r, &req, "join token request"); err != nil {
		return nil, err
	}
	id, err := spiffeid.FromString(req.SPIFFEID)
	if err != nil {
		return nil, fmt.Errorf("%w: spiffe_id: %v", errBadRequest, err)
	}
	var ttl time.Duration // zero: the CA's default
	if req.TTL != "" {
		if ttl, err = time.ParseDuration(req.TTL); err != nil {
			return nil, fmt.Errorf("%w: ttl %q is not a duration", errBadRequest, req.TTL)
		}
		if ttl == 0 {
			return nil, fmt.Errorf("%w: ttl must be positive", errBadRequest)
		}
	}
	token, rec, err := s.cfg.Authority.CreateJoinToken(r.Context(), id, ttl)
	if err != nil {
		return nil, err
	}
	s.cfg.Logger.Info("join token created", "spiffe_id", rec.SPIFFEID, "expires_at", rec.ExpiresAt, "peer", r.RemoteAddr)
	return &JoinTokenResponse{Token: token, SPIFFEID: rec.SPIFFEID, ExpiresAt: rec.ExpiresAt}, nil
}

// IssuedRecord is one entry of GET /v1/admin/issuances.
type IssuedRecord struct {
	store.Issuance
	Revoked bool `json:"revoked"`
}

// IssuancesResponse answers GET /v1/admin/issuances.
type IssuancesResponse struct {
	Issuances []IssuedRecord `json:"issuances"`
	// Now is the server's time, so clients judge liveness consistently.
	Now time.Time `json:"now"`
}

// maxIssuancesListed bounds one listing.
const maxIssuancesListed = 100_000

// handleIssuances lists the issuance log: ?spiffe_id= filters by identity,
// ?since= (a Go duration) by issuance time.
func (s *Server) handleIssuances(w http.ResponseWriter, r *http.Request) {
	resp, err := s.issuances(r)
	s.reply(w, "issuances", resp, err)
}

func (s *Server) issuances(r *http.Request) (*IssuancesResponse, error) {
	now := s.cfg.Clock.Now()
	f := store.IssuanceFilter{SPIFFEID: r.URL.Query().Get("spiffe_id"), Limit: maxIssuancesListed}
	if f.SPIFFEID != "" {
		id, err := spiffeid.FromString(f.SPIFFEID)
		if err != nil {
			return nil, fmt.Errorf("%w: spiffe_id: %v", errBadRequest, err)
		}
		f.SPIFFEID = id.String()
	}
	if since := r.URL.Query().Get("since"); since != "" {
		d, err := time.ParseDuration(since)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("%w: since %q is not a positive duration", errBadRequest, since)
		}
		f.IssuedSince = now.Add(-d)
	}
	recs, err := s.cfg.Authority.Issuances(r.Context(), f)
	if err != nil {
		return nil, err
	}
	out := &IssuancesResponse{Issuances: make([]IssuedRecord, 0, len(recs)), Now: now}
	for _, rec := range recs {
		out.Issuances = append(out.Issuances, IssuedRecord{Issuance: rec.Issuance, Revoked: rec.Revoked})
	}
	return out, nil
}

// RevokeRequest is the body of POST /v1/admin/revocations: exactly one of
// Serial (hex) and SPIFFEID.
type RevokeRequest struct {
	Serial   string `json:"serial,omitempty"`
	SPIFFEID string `json:"spiffe_id,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// RevokeResponse answers it with the entry as stored.
type RevokeResponse struct {
	Serial    string    `json:"serial,omitempty"`
	SPIFFEID  string    `json:"spiffe_id,omitempty"`
	RevokedAt time.Time `json:"revoked_at"`
}

func (s *Server) handleRevoke(w http.ResponseWriter, r *http.Request) {
	resp, err := s.revoke(w, r)
	s.reply(w, "revocations", resp, err)
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request) (*RevokeResponse, error) {
	var req RevokeRequest
	if err := s.decodeBody(w, r, &req, "revocation"); err != nil {
		return nil, err
	}
	if (req.Serial == "") == (req.SPIFFEID == "") {
		return nil, fmt.Errorf("%w: give exactly one of serial and spiffe_id", errBadRequest)
	}
	rev, err := s.cfg.Authority.Revoke(r.Context(), store.Revocation{Serial: req.Serial, SPIFFEID: req.SPIFFEID, Reason: req.Reason})
	if err != nil {
		return nil, err
	}
	s.cfg.Logger.Warn("revoked", "serial", rev.Serial, "spiffe_id", rev.SPIFFEID, "reason", rev.Reason, "peer", r.RemoteAddr)
	return &RevokeResponse{Serial: rev.Serial, SPIFFEID: rev.SPIFFEID, RevokedAt: rev.RevokedAt}, nil
}

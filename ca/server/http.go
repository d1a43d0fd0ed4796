package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
)

// SignRequest is the body of POST /v1/sign.
type SignRequest struct {
	// CSR is a PEM "CERTIFICATE REQUEST".
	CSR string `json:"csr"`
	// TTL is a Go duration ("24h"); absent means the CA's default.
	TTL string `json:"ttl,omitempty"`
}

// SignResponse is the answer to POST /v1/sign.
type SignResponse struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// CertChain is leaf first, root last, one PEM certificate each.
	CertChain []string `json:"cert_chain"`
	// TrustBundle is the PEM root certificates to verify peers with.
	TrustBundle string `json:"trust_bundle"`
}

// ErrorResponse is the body of every non-2xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func (s *Server) handleSign(w http.ResponseWriter, r *http.Request) {
	var resp *SignResponse
	err := s.failures.allow(r.RemoteAddr)
	if err == nil {
		var release func()
		if release, err = s.gate.acquire(r.Context()); err == nil {
			resp, err = s.sign(w, r)
			release()
		}
	}
	if errors.Is(err, attestor.ErrUnauthenticated) {
		s.failures.failed(r.RemoteAddr)
	}
	s.reply(w, "sign", resp, err)
}

func (s *Server) sign(w http.ResponseWriter, r *http.Request) (*SignResponse, error) {
	cred := attestor.Credential{Peer: r.RemoteAddr}
	if r.TLS != nil {
		cred.PeerCertificates = r.TLS.PeerCertificates
	}
	tok, err := bearerToken(r.Header.Values("Authorization"))
	if err != nil {
		return nil, err
	}
	cred.BearerToken = tok

	var req SignRequest
	if err := s.decodeBody(w, r, &req, "sign request"); err != nil {
		return nil, err
	}
	var ttl time.Duration
	if req.TTL != "" {
		if ttl, err = time.ParseDuration(req.TTL); err != nil {
			return nil, fmt.Errorf("%w: %q is not a duration", ca.ErrInvalidTTL, req.TTL)
		}
		if ttl <= 0 {
			return nil, fmt.Errorf("%w: %s is not positive", ca.ErrInvalidTTL, req.TTL)
		}
	}
	id, err := s.cfg.Attestor.Attest(r.Context(), cred)
	if err != nil {
		return nil, err
	}
	issued, err := s.cfg.Authority.Sign(r.Context(), ca.SignRequest{CSR: []byte(req.CSR), TTL: ttl, Identity: id, Peer: cred.Peer})
	if err != nil {
		return nil, err
	}
	return &SignResponse{
		SPIFFEID:    issued.Record.SPIFFEID,
		Serial:      issued.Record.Serial,
		NotBefore:   issued.Record.NotBefore,
		NotAfter:    issued.Record.NotAfter,
		CertChain:   issued.ChainPEM,
		TrustBundle: string(s.cfg.Authority.RootsPEM()),
	}, nil
}

// handleBundle serves the trust bundle as PEM, or as a SPIFFE bundle (JWKS,
// with the JWT-SVID keys beside the roots) with ?format=spiffe or "Accept:
// application/json".
func (s *Server) handleBundle(w http.ResponseWriter, r *http.Request) {
	format := r.URL.Query().Get("format")
	if format == "" && strings.Contains(r.Header.Get("Accept"), "application/json") {
		format = "spiffe"
	}
	switch format {
	case "", "pem":
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write(s.cfg.Authority.RootsPEM()) // a client gone mid-answer
	case "spiffe":
		auth := s.cfg.Authority
		sb := spiffebundle.FromX509Authorities(auth.TrustDomain(), auth.Bundle().X509Authorities())
		sb.SetJWTAuthorities(auth.JWTBundle().JWTAuthorities())
		b, err := sb.Marshal()
		if err != nil {
			s.cfg.Logger.Error("marshal SPIFFE bundle", "err", err)
			writeJSON(w, http.StatusInternalServerError, ErrorResponse{Error: "internal error", Code: codes.Internal.String()})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b) // a client gone mid-answer
	default:
		writeJSON(w, http.StatusBadRequest, ErrorResponse{Error: "format must be pem or spiffe", Code: codes.InvalidArgument.String()})
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // a client gone mid-answer
}

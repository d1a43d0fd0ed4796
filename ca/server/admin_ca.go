package server

import (
	"fmt"
	"net/http"

	"github.com/meshca/meshca/ca"
)

// RootRotationRequest is the body of POST /v1/admin/root-rotation.
type RootRotationRequest struct {
	// Action is "start", "advance" or "abort".
	Action string `json:"action"`
	// Phase is the phase an advance leaves: "prepared" or "switched".
	Phase string `json:"phase,omitempty"`
}

// RootRotationResponse answers it: what was done, and the CA's state after.
type RootRotationResponse struct {
	Message string     `json:"message"`
	Status  *ca.Status `json:"status"`
}

// IntermediateRotationRequest is the body of POST
// /v1/admin/intermediate-rotation: the emergency rotation, which must say
// "now": true.
type IntermediateRotationRequest struct {
	Now    bool   `json:"now"`
	Reason string `json:"reason,omitempty"`
}

// IntermediateRotationResponse answers it with the revoked intermediate
// and the one that signs now.
type IntermediateRotationResponse struct {
	Revoked ca.CertStatus `json:"revoked"`
	Active  ca.CertStatus `json:"active"`
}

func (s *Server) handleCAStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.cfg.Authority.Status(r.Context())
	s.reply(w, "ca", st, err)
}

func (s *Server) handleRootRotation(w http.ResponseWriter, r *http.Request) {
	resp, err := s.rootRotation(w, r)
	s.reply(w, "root-rotation", resp, err)
}

func (s *Server) rootRotation(w http.ResponseWriter, r *http.Request) (*RootRotationResponse, error) {
	var req RootRotationRequest
	if err := s.decodeBody(w, r, &req, "root rotation request"); err != nil {
		return nil, err
	}
	switch req.Action {
	case ca.RootRotationStart, ca.RootRotationAdvance, ca.RootRotationAbort:
	default:
		return nil, fmt.Errorf("%w: action must be start, advance or abort, not %q", errBadRequest, req.Action)
	}
	msg, err := s.cfg.Authority.RotateRoot(r.Context(), ca.RootRotationRequest{Action: req.Action, Phase: req.Phase})
	if err != nil {
		return nil, err
	}
	s.cfg.Logger.Info("root rotation request", "action", req.Action, "phase", req.Phase, "result", msg, "peer", r.RemoteAddr)
	st, err := s.cfg.Authority.Status(r.Context())
	if err != nil {
		return nil, err
	}
	return &RootRotationResponse{Message: msg, Status: st}, nil
}

func (s *Server) handleIntermediateRotation(w http.ResponseWriter, r *http.Request) {
	resp, err := s.intermediateRotation(w, r)
	s.reply(w, "intermediate-rotation", resp, err)
}

func (s *Server) intermediateRotation(w http.ResponseWriter, r *http.Request) (*IntermediateRotationResponse, error) {
	var req IntermediateRotationRequest
	if err := s.decodeBody(w, r, &req, "intermediate rotation request"); err != nil {
		return nil, err
	}
	if !req.Now {
		return nil, fmt.Errorf(`%w: intermediates rotate by themselves; the emergency rotation, which refuses renewal to every certificate the current one signed, needs "now": true`, errBadRequest)
	}
	revoked, active, err := s.cfg.Authority.RotateIntermediateNow(r.Context(), req.Reason)
	if err != nil {
		return nil, err
	}
	s.cfg.Logger.Warn("emergency intermediate rotation requested", "reason", req.Reason, "peer", r.RemoteAddr)
	return &IntermediateRotationResponse{Revoked: ca.CertStatusOf("revoked", revoked), Active: ca.CertStatusOf("active", active)}, nil
}

package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
)

// classify maps an error from the attestor or the CA to the status the
// caller sees and a message safe to show: the wrapped errors of known kinds
// carry messages written for callers; anything else is logged and reported
// as a bare internal error so paths, keys or stack traces never leak.
func classify(log *slog.Logger, err error) (codes.Code, string) {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return codes.ResourceExhausted, fmt.Sprintf("request body over %d bytes", tooBig.Limit)
	case errors.Is(err, errThrottled):
		return codes.ResourceExhausted, err.Error()
	case errors.As(err, new(*OverloadedError)):
		return codes.ResourceExhausted, err.Error()
	case errors.Is(err, attestor.ErrUnauthenticated):
		return codes.Unauthenticated, err.Error()
	case errors.Is(err, attestor.ErrPermissionDenied), errors.Is(err, ca.ErrIdentityMismatch):
		return codes.PermissionDenied, err.Error()
	case errors.Is(err, ca.ErrInvalidCSR), errors.Is(err, ca.ErrInvalidTTL), errors.Is(err, ca.ErrInvalidRevocation), errors.Is(err, ca.ErrInvalidJoinToken),
		errors.Is(err, ca.ErrInvalidJWTRequest), errors.Is(err, errBadRequest):
		return codes.InvalidArgument, err.Error()
	case errors.Is(err, ca.ErrRotation):
		return codes.FailedPrecondition, err.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded, "deadline exceeded"
	case errors.Is(err, context.Canceled):
		return codes.Canceled, "request canceled"
	case errors.Is(err, ca.ErrUnavailable), errors.Is(err, attestor.ErrUnavailable), errors.Is(err, store.ErrUnavailable):
		log.Warn("CA unavailable", "err", err)
		return codes.Unavailable, "CA temporarily unavailable, retry later"
	}
	log.Error("internal error", "err", err)
	return codes.Internal, "internal error"
}

// errBadRequest marks request-shape errors found at the edge.
var errBadRequest = errors.New("bad request")

func httpStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.InvalidArgument:
		return http.StatusBadRequest
	case codes.FailedPrecondition:
		return http.StatusConflict
	case codes.ResourceExhausted:
		return http.StatusRequestEntityTooLarge
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.Canceled:
		return 499 // client closed request
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// reply writes resp, or err classified, as the JSON answer of an HTTP
// endpoint, and counts it.
func (s *Server) reply(w http.ResponseWriter, endpoint string, resp any, err error) {
	if err != nil {
		code, msg := classify(s.cfg.Logger, err)
		s.metrics.Request("http", endpoint, code.String())
		st := httpStatus(code)
		var over *OverloadedError
		switch {
		case errors.Is(err, errThrottled):
			st = http.StatusTooManyRequests
			w.Header().Set("Retry-After", "1")
		case errors.As(err, &over):
			st = http.StatusTooManyRequests
			w.Header().Set("Retry-After", retryAfterSeconds(over.RetryAfter))
		}
		writeJSON(w, st, ErrorResponse{Error: msg, Code: code.String()})
		return
	}
	s.metrics.Request("http", endpoint, codes.OK.String())
	writeJSON(w, http.StatusOK, resp)
}

// decodeBody reads a bounded JSON body into dst; unknown fields are errors.
// what names the expected body in the error.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, dst any, what string) error {
	r.Body = http.MaxBytesReader(w, r.Body, int64(s.cfg.MaxRequestBytes))
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return err
		}
		return fmt.Errorf("%w: body is not a JSON %s: %v", errBadRequest, what, err)
	}
	return nil
}

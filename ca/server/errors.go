package server

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca"
)

// classify maps an error from the attestor or the CA to the status the
// caller sees and a message safe to show: the wrapped errors of known kinds
// carry messages written for callers; anything else is logged and reported
// as a bare internal error so paths, keys or stack traces never leak.
func classify(log *slog.Logger, err error) (codes.Code, string) {
	switch {
	case errors.Is(err, attestor.ErrUnauthenticated):
		return codes.Unauthenticated, err.Error()
	case errors.Is(err, attestor.ErrPermissionDenied), errors.Is(err, ca.ErrIdentityMismatch):
		return codes.PermissionDenied, err.Error()
	case errors.Is(err, ca.ErrInvalidCSR), errors.Is(err, ca.ErrInvalidTTL), errors.Is(err, ca.ErrInvalidRevocation), errors.Is(err, errBadRequest):
		return codes.InvalidArgument, err.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded, "deadline exceeded"
	case errors.Is(err, context.Canceled):
		return codes.Canceled, "request canceled"
	case errors.Is(err, ca.ErrUnavailable), errors.Is(err, attestor.ErrUnavailable):
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

package server

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshca/meshca/attestor"
)

// Impersonator decides whether caller, already attested, may obtain a
// certificate for the identity it requested instead of its own: Istio
// ambient's ztunnel asks for the identities of the pods on its node
// (attestor/k8s.NodeAuthorizer). requested is the request's
// ImpersonatedIdentity as sent, possibly malformed. A refusal wraps
// attestor.ErrUnauthenticated with a message that tells the caller
// nothing more.
type Impersonator interface {
	Impersonate(ctx context.Context, caller attestor.Identity, requested string) (attestor.Identity, error)
}

// impersonatedIdentityKey is the field of IstioCertificateRequest.metadata
// in which a node agent names the identity it asks for (Istio's
// security.ImpersonatedIdentity).
const impersonatedIdentityKey = "ImpersonatedIdentity"

// errImpersonationRefused is the one answer to an impersonation refused
// for want of an Impersonator, in istiod's words.
var errImpersonationRefused = fmt.Errorf("%w: request impersonation authentication failure", attestor.ErrUnauthenticated)

// impersonation returns the identity a request's metadata asks for and
// whether it asks for one. A field that is present but not a string (or
// an empty one) is passed on as "": refused as malformed, never read as
// "no impersonation" (istiod reads it so and issues the caller's own
// identity; refusing says plainly that the request was not understood).
func impersonation(md *structpb.Struct) (string, bool) {
	v, ok := md.GetFields()[impersonatedIdentityKey]
	if !ok {
		return "", false
	}
	return v.GetStringValue(), true
}

// impersonate turns caller into the identity it requested, when the
// Impersonator allows it.
func (s *Server) impersonate(ctx context.Context, caller attestor.Identity, requested string) (attestor.Identity, error) {
	if s.cfg.Impersonator == nil {
		s.cfg.Logger.Warn("impersonation refused: no node authorizer configured (--trusted-node-accounts)", "caller", caller.ID.String(), "requested", requested)
		return attestor.Identity{}, errImpersonationRefused
	}
	return s.cfg.Impersonator.Impersonate(ctx, caller, requested)
}

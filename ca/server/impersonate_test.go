package server_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca/server"
)

// fakeImpersonator grants otherID to a caller holding fooID and refuses
// anything else; it remembers what it was asked.
type fakeImpersonator struct {
	mu    sync.Mutex
	asked []string
}

func (f *fakeImpersonator) Impersonate(_ context.Context, caller attestor.Identity, requested string) (attestor.Identity, error) {
	f.mu.Lock()
	f.asked = append(f.asked, requested)
	f.mu.Unlock()
	if caller.ID != fooID || requested != otherID.String() {
		return attestor.Identity{}, fmt.Errorf("%w: request impersonation authentication failure", attestor.ErrUnauthenticated)
	}
	return attestor.Identity{ID: otherID, Kind: "fake-impersonation", Subject: caller.Subject, Details: map[string]string{"impersonated-by": caller.ID.String()}}, nil
}

func (f *fakeImpersonator) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.asked...)
}

// withImpersonation is the request ztunnel sends: a Struct in the
// request's metadata, not a gRPC header.
func withImpersonation(csr []byte, v *structpb.Value) *pb.IstioCertificateRequest {
	return &pb.IstioCertificateRequest{Csr: string(csr), Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"ImpersonatedIdentity": v}}}
}

// TestGRPCImpersonation: the gRPC API hands ImpersonatedIdentity to the
// Impersonator and signs what it grants; without an Impersonator every
// such request is refused with istiod's opaque answer; without the field
// nothing changes.
func TestGRPCImpersonation(t *testing.T) {
	bearer := []string{"authorization", "Bearer " + fooToken}
	otherCSR := csrFor(t, newKey(t), otherID)

	t.Run("no impersonator", func(t *testing.T) {
		p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
		err := rawCall(t, p, withImpersonation(otherCSR, structpb.NewStringValue(otherID.String())), bearer...)
		wantCode(t, err, codes.Unauthenticated, "request impersonation authentication failure")
		if n := len(p.records(t)); n != 0 {
			t.Fatalf("%d records after a refusal", n)
		}
		// Without the field, the caller's own identity as always.
		if err := rawCall(t, p, &pb.IstioCertificateRequest{Csr: string(csrFor(t, newKey(t), fooID))}, bearer...); err != nil {
			t.Fatal(err)
		}
	})

	imp := &fakeImpersonator{}
	p := startPlaneWith(t, filepath.Join(t.TempDir(), "meshca.db"), func(c *server.Config) { c.Impersonator = imp })
	if err := rawCall(t, p, withImpersonation(otherCSR, structpb.NewStringValue(otherID.String())), bearer...); err != nil {
		t.Fatalf("granted impersonation: %v", err)
	}
	recs := p.records(t)
	if len(recs) != 1 || recs[0].SPIFFEID != otherID.String() || recs[0].CredentialKind != "fake-impersonation" ||
		recs[0].Requester == "" || recs[0].Details["impersonated-by"] != fooID.String() {
		t.Fatalf("records %+v, want one for %s impersonated by %s", recs, otherID, fooID)
	}
	tests := []struct {
		name string
		v    *structpb.Value
		csr  []byte
		code codes.Code
	}{
		{"refused by the impersonator", structpb.NewStringValue("spiffe://example.org/ns/x/sa/y"), otherCSR, codes.Unauthenticated},
		{"not a string: passed on as empty, refused", structpb.NewBoolValue(true), otherCSR, codes.Unauthenticated},
		{"null value: passed on as empty, refused", structpb.NewNullValue(), otherCSR, codes.Unauthenticated},
		{"granted, but the CSR asks for the caller's own identity", structpb.NewStringValue(otherID.String()), csrFor(t, newKey(t), fooID), codes.PermissionDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, rawCall(t, p, withImpersonation(tc.csr, tc.v), bearer...), tc.code, "")
		})
	}
	if err := rawCall(t, p, &pb.IstioCertificateRequest{Csr: string(csrFor(t, newKey(t), fooID)), Metadata: &structpb.Struct{}}, bearer...); err != nil {
		t.Fatalf("empty metadata: %v", err)
	}
	want := []string{otherID.String(), "spiffe://example.org/ns/x/sa/y", "", "", otherID.String()}
	if got := imp.requests(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the impersonator was asked %q, want %q", got, want)
	}
}

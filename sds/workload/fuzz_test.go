package workload

import (
	"context"
	"strings"
	"testing"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/meshca/meshca/internal/testca"
	"github.com/meshca/meshca/sds"
)

// fakeStream is a server stream that takes one response and then ends the
// call, as a client that read it and went away.
type fakeStream[R any] struct {
	grpc.ServerStream // nil: only Context and Send are used
	ctx               context.Context
	done              context.CancelFunc
	sent              []*R
}

func (s *fakeStream[R]) Context() context.Context { return s.ctx }
func (s *fakeStream[R]) Send(r *R) error {
	s.sent = append(s.sent, r)
	s.done()
	return nil
}

// FuzzSecurityHeader calls every Workload API method directly with
// arbitrary request metadata (keys and values one a line, keys lower-cased
// and repeated keys' values kept in order, as the gRPC transport hands them
// over) and arbitrary JWT request fields. It checks that an SVID or bundle
// is served exactly when the metadata holds "workload.spiffe.io: true" once,
// that it is then the source's, and that every other call is refused with
// InvalidArgument, or Unimplemented for the JWT methods.
func FuzzSecurityHeader(f *testing.F) {
	ca := testca.New(f)
	svid := ca.Issue(f, 1)
	srv, err := New(Config{Source: sds.NewStaticSource(svid)})
	if err != nil {
		f.Fatal(err)
	}
	wantSVID, err := x509SVIDResponse(svid)
	if err != nil {
		f.Fatal(err)
	}
	wantBundles := x509BundlesResponse(svid)

	f.Add("workload.spiffe.io", "true", "aud", "spiffe://example.org/x")
	f.Add("Workload.Spiffe.IO", "true", "", "")
	f.Add("workload.spiffe.io\nworkload.spiffe.io", "true\ntrue", "", "")
	f.Add("workload.spiffe.io", "True", "", "")
	f.Add("workload.spiffe.io", " true", "", "")
	f.Add("workload.spiffe.io\nuser-agent", "false\ngrpc-go", "", "")
	f.Add("", "", "", "")
	f.Fuzz(func(t *testing.T, keys, values, audience, spiffeID string) {
		md := metadata.MD{}
		vals := strings.Split(values, "\n")
		for i, k := range strings.Split(keys, "\n") {
			if i < len(vals) {
				k = strings.ToLower(k)
				md[k] = append(md[k], vals[i])
			}
		}
		v := md[securityHeader]
		allowed := len(v) == 1 && v[0] == "true"

		ctx, cancel := context.WithTimeout(metadata.NewIncomingContext(context.Background(), md), waitFor)
		defer cancel()
		refused := func(method string, err error, served bool) {
			t.Helper()
			if allowed {
				return
			}
			if served || status.Code(err) != codes.InvalidArgument {
				t.Fatalf("%s with metadata %v: served %v, error %v; want InvalidArgument", method, md, served, err)
			}
		}

		sctx, done := context.WithCancel(ctx)
		svids := &fakeStream[workloadpb.X509SVIDResponse]{ctx: sctx, done: done}
		err := srv.FetchX509SVID(&workloadpb.X509SVIDRequest{}, svids)
		done()
		refused("FetchX509SVID", err, len(svids.sent) > 0)
		if allowed && (err != nil || len(svids.sent) != 1 || !proto.Equal(svids.sent[0], wantSVID)) {
			t.Fatalf("FetchX509SVID with metadata %v: %d responses, %v; want the source's SVID", md, len(svids.sent), err)
		}

		bctx, bdone := context.WithCancel(ctx)
		bundles := &fakeStream[workloadpb.X509BundlesResponse]{ctx: bctx, done: bdone}
		err = srv.FetchX509Bundles(&workloadpb.X509BundlesRequest{}, bundles)
		bdone()
		refused("FetchX509Bundles", err, len(bundles.sent) > 0)
		if allowed && (err != nil || len(bundles.sent) != 1 || !proto.Equal(bundles.sent[0], wantBundles)) {
			t.Fatalf("FetchX509Bundles with metadata %v: %d responses, %v; want the source's bundle", md, len(bundles.sent), err)
		}
		if ctx.Err() != nil {
			t.Fatalf("a stream did not end when its client went away")
		}

		jwt := func(method string, err error) {
			t.Helper()
			refused(method, err, false)
			if allowed && status.Code(err) != codes.Unimplemented {
				t.Fatalf("%s: %v, want Unimplemented", method, err)
			}
		}
		_, err = srv.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{audience}, SpiffeId: spiffeID})
		jwt("FetchJWTSVID", err)
		_, err = srv.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: audience, Svid: spiffeID})
		jwt("ValidateJWTSVID", err)
		jctx, jdone := context.WithCancel(ctx)
		err = srv.FetchJWTBundles(&workloadpb.JWTBundlesRequest{}, &fakeStream[workloadpb.JWTBundlesResponse]{ctx: jctx, done: jdone})
		jdone()
		jwt("FetchJWTBundles", err)
	})
}

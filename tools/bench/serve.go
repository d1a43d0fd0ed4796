package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"net/http"
	_ "net/http/pprof" // -pprof
	"time"

	"google.golang.org/grpc"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/tools/bench/internal/floor"
	"github.com/meshca/meshca/tools/bench/internal/istioca"
	"github.com/meshca/meshca/tools/bench/internal/kube"
	"github.com/meshca/meshca/tools/bench/internal/peer"
)

// serve runs one peer server: `serve floor|istio --dir D --listen A
// [--kubeconfig K]`. With a kubeconfig the floor verifies ServiceAccount
// tokens offline against that API server's JWKS, and Istio's server
// reviews them with TokenReview; without, both authenticate clients by
// their certificate.
func serve(args []string) error {
	if len(args) == 0 || (args[0] != "floor" && args[0] != "istio") {
		return errors.New("usage: bench serve floor|istio --dir DIR --listen ADDR [--kubeconfig FILE]")
	}
	kind := args[0]
	fs := flag.NewFlagSet("serve "+kind, flag.ContinueOnError)
	dir := fs.String("dir", "", "CA directory (root-cert.pem, ca-cert.pem, ca-key.pem, cert-chain.pem, server-*.pem)")
	listen := fs.String("listen", "127.0.0.1:15012", "address to serve on")
	kubeconfig := fs.String("kubeconfig", "", "API server for Kubernetes tokens; empty: mTLS only")
	qps := fs.Float64("qps", istioca.DefaultQPS, "istio: client-go QPS for TokenReviews (istiod's)")
	burst := fs.Int("burst", istioca.DefaultBurst, "istio: client-go burst (istiod's)")
	pprofAddr := fs.String("pprof", "", "serve Go's profiler on this address (to compare a peer's profile with meshca's --profiling)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *pprofAddr != "" {
		go func() { _ = http.ListenAndServe(*pprofAddr, nil) }() //nolint:gosec // a benchmark's debug port on 127.0.0.1
	}
	if kind == "istio" {
		return istioca.Run(istioca.Config{Dir: *dir, Listen: *listen, Kubeconfig: *kubeconfig, QPS: float32(*qps), Burst: *burst})
	}
	auth, clientAuth := floor.ClientCert, tls.RequireAndVerifyClientCert
	if *kubeconfig != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b, err := kube.FetchJWKS(ctx, *kubeconfig)
		if err != nil {
			return err
		}
		keys, err := floor.ParseJWKS(b)
		if err != nil {
			return err
		}
		v := &floor.Verifier{Keys: keys, Issuer: kube.Issuer, Audiences: kube.Audiences}
		auth, clientAuth = floor.Token(v, "cluster.local"), tls.NoClientCert
	}
	srv, err := floor.New(*dir, auth)
	if err != nil {
		return err
	}
	return peer.Serve(peer.Config{Dir: *dir, Listen: *listen, ClientAuth: clientAuth}, func(g *grpc.Server) {
		pb.RegisterIstioCertificateServiceServer(g, srv)
	})
}

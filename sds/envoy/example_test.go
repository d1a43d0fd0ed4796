package envoy_test

import (
	"context"
	"log/slog"

	"google.golang.org/grpc"

	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/envoy"
	"github.com/meshca/meshca/sds/socket"
)

// An agent serves SDS on a Unix socket Envoy's bootstrap points at, and
// shuts down by ending Run before stopping the gRPC server.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.Default()
	var source sds.Source = sds.NewStaticSource(nil) // the agent's Manager

	srv, err := envoy.New(envoy.Config{Source: source, Logger: log})
	if err != nil {
		log.Error("sds", "err", err)
		return
	}
	l, err := socket.Listen("/var/run/meshca/sds.sock", log)
	if err != nil {
		log.Error("sds", "err", err)
		return
	}
	g := grpc.NewServer(grpc.Creds(socket.Credentials()))
	srv.Register(g)
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	go g.Serve(l)

	// On shutdown: streams end with Run, then GracefulStop returns.
	cancel()
	<-done
	g.GracefulStop()
}

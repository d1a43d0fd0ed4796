package workload_test

import (
	"log/slog"

	"google.golang.org/grpc"

	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/socket"
	"github.com/meshca/meshca/sds/workload"
)

// An agent serves the Workload API on its own socket; clients use
// go-spiffe's workloadapi with the address "unix:///var/run/meshca/workload.sock".
func Example() {
	log := slog.Default()
	var source sds.Source = sds.NewStaticSource(nil) // the agent's Manager

	srv, err := workload.New(workload.Config{Source: source, Logger: log})
	if err != nil {
		log.Error("workload", "err", err)
		return
	}
	l, err := socket.Listen("/var/run/meshca/workload.sock", log)
	if err != nil {
		log.Error("workload", "err", err)
		return
	}
	// socket.Credentials makes socket.PeerCred(ctx) available to handlers.
	g := grpc.NewServer(grpc.Creds(socket.Credentials()))
	srv.Register(g)
	go g.Serve(l)

	// On shutdown: end the streams, then stop.
	srv.Close()
	g.GracefulStop()
}

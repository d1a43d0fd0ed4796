package server_test

import (
	"context"
	"crypto/tls"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/ca/server"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

// healthPlane starts a server whose readiness the test sets, with a fake
// clock for the health service's polling, and a client without a client
// certificate.
func healthPlane(t *testing.T) (healthpb.HealthClient, *atomic.Pointer[error], *clocktest.Fake) {
	t.Helper()
	notReady := new(atomic.Pointer[error])
	clk := clocktest.New(time.Now())
	p := startPlaneWith(t, filepath.Join(t.TempDir(), "meshca.db"), func(c *server.Config) {
		c.Clock = clk
		c.Ready = func(context.Context) error {
			if err := notReady.Load(); err != nil {
				return *err
			}
			return nil
		}
	})
	conn, err := grpc.NewClient(p.srv.Addr("grpc").String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: p.roots(), ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn), notReady, clk
}

// TestHealthCheck: grpc.health.v1 Check answers for the whole server and
// each of its services what /readyz answers, and NotFound for another name.
func TestHealthCheck(t *testing.T) {
	client, notReady, _ := healthPlane(t)
	informers := errors.New("informers not synced")
	for _, tc := range []struct {
		name     string
		service  string
		notReady error
		want     healthpb.HealthCheckResponse_ServingStatus
		code     codes.Code
	}{
		{"the server", "", nil, healthpb.HealthCheckResponse_SERVING, codes.OK},
		{"the CSR API", "istio.v1.auth.IstioCertificateService", nil, healthpb.HealthCheckResponse_SERVING, codes.OK},
		{"JWT-SVIDs", server.JWTServiceName, nil, healthpb.HealthCheckResponse_SERVING, codes.OK},
		{"bundles", server.BundleServiceName, nil, healthpb.HealthCheckResponse_SERVING, codes.OK},
		{"the server, not ready", "", informers, healthpb.HealthCheckResponse_NOT_SERVING, codes.OK},
		{"the CSR API, not ready", "istio.v1.auth.IstioCertificateService", informers, healthpb.HealthCheckResponse_NOT_SERVING, codes.OK},
		{"another service", "grpc.health.v1.Health", nil, 0, codes.NotFound},
		{"a name that is not a service", "../../etc", nil, 0, codes.NotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.notReady != nil {
				notReady.Store(&tc.notReady)
				defer notReady.Store(nil)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: tc.service})
			if status.Code(err) != tc.code {
				t.Fatalf("Check(%q): %v; want code %v", tc.service, err, tc.code)
			}
			if err == nil && resp.GetStatus() != tc.want {
				t.Errorf("Check(%q) = %v, want %v", tc.service, resp.GetStatus(), tc.want)
			}
		})
	}
}

// TestHealthWatch: Watch sends the status at once and then each change it
// sees when it rechecks, and SERVICE_UNKNOWN for another name without
// ending the call.
func TestHealthWatch(t *testing.T) {
	client, notReady, clk := healthPlane(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watch := func(ctx context.Context, service string) healthpb.Health_WatchClient {
		t.Helper()
		w, err := client.Watch(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	next := func(w healthpb.Health_WatchClient, want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		resp, err := w.Recv()
		if err != nil || resp.GetStatus() != want {
			t.Fatalf("Watch: %v, %v; want %v", resp.GetStatus(), err, want)
		}
	}
	w := watch(ctx, "")
	next(w, healthpb.HealthCheckResponse_SERVING)
	unknownCtx, leave := context.WithCancel(ctx)
	defer leave()
	unknown := watch(unknownCtx, "no.such.Service")
	next(unknown, healthpb.HealthCheckResponse_SERVICE_UNKNOWN)

	// Both calls wait for their next recheck. Each step lets both wait
	// again before the clock moves, so that neither misses a recheck.
	step := func() {
		t.Helper()
		clocktest.Eventually(t, "both watches waiting", func() bool { return clk.Waiters() == 2 })
		clk.Advance(time.Second)
	}
	step() // nothing changed: nothing sent
	storeErr := errors.New("store unavailable")
	notReady.Store(&storeErr)
	step()
	next(w, healthpb.HealthCheckResponse_NOT_SERVING)
	notReady.Store(nil)
	step()
	next(w, healthpb.HealthCheckResponse_SERVING)

	// The unknown service's call stayed open and sent nothing more: when
	// its caller leaves, it ends with Canceled, not a message.
	leave()
	if resp, err := unknown.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("unknown service's watch after leaving: %v, %v; want Canceled", resp, err)
	}
}

// Command etcd is a minimal single-member etcd for integration tests, built
// from go.etcd.io/etcd/server/v3/embed so that no etcd release binary has to be
// downloaded. It serves plain HTTP on 127.0.0.1 only and exits cleanly on
// SIGTERM or SIGINT.
//
// The flag names are a subset of the upstream etcd flags, so that tools which
// start "etcd" (controller-runtime's envtest, for instance) can use it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "etcd:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		name         = flag.String("name", "testenv", "member name")
		dataDir      = flag.String("data-dir", "", "data directory (required)")
		clientURLs   = flag.String("listen-client-urls", "http://127.0.0.1:2379", "comma-separated client URLs, host must be 127.0.0.1")
		advertise    = flag.String("advertise-client-urls", "", "comma-separated advertised client URLs (default: the listen URLs)")
		peerURLs     = flag.String("listen-peer-urls", "http://127.0.0.1:0", "comma-separated peer URLs, host must be 127.0.0.1 (port 0: any free port)")
		logLevel     = flag.String("log-level", "warn", "debug, info, warn, error")
		noFsync      = flag.Bool("unsafe-no-fsync", false, "disable fsync (tests only: data is lost on a crash)")
		quotaBytes   = flag.Int64("quota-backend-bytes", 0, "backend size quota in bytes (0: etcd default)")
		readyTimeout = flag.Duration("ready-timeout", time.Minute, "give up if the member is not ready within this time")
		version      = flag.Bool("version", false, "print the embedded etcd version and exit")
	)
	flag.Parse()
	if *version {
		fmt.Println("etcd (embed) for meshca tests, go.etcd.io/etcd/server/v3 v3.6.5")
		return nil
	}
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", flag.Args())
	}
	if *dataDir == "" {
		return errors.New("--data-dir is required")
	}

	lcurls, err := loopbackURLs("listen-client-urls", *clientURLs)
	if err != nil {
		return err
	}
	acurls := lcurls
	if *advertise != "" {
		if acurls, err = loopbackURLs("advertise-client-urls", *advertise); err != nil {
			return err
		}
	}
	lpurls, err := loopbackURLs("listen-peer-urls", *peerURLs)
	if err != nil {
		return err
	}

	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = lcurls
	cfg.AdvertiseClientUrls = acurls
	cfg.ListenPeerUrls = lpurls
	cfg.AdvertisePeerUrls = lpurls
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = *logLevel
	cfg.UnsafeNoFsync = *noFsync
	cfg.QuotaBackendBytes = *quotaBytes
	// etcdmain applies this default itself; embed.NewConfig leaves it at 0,
	// which logs every request as slow.
	cfg.WarningUnaryRequestDuration = embed.DefaultWarningUnaryRequestDuration

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	// Close is not idempotent: every path below calls it exactly once.

	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintf(os.Stderr, "etcd: ready, serving clients on %s\n", *clientURLs)
	case <-time.After(*readyTimeout):
		e.Close()
		return fmt.Errorf("not ready after %s", *readyTimeout)
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr, "etcd: signalled before ready, stopping")
		e.Close()
		return nil
	}

	select {
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr, "etcd: signalled, stopping")
		e.Close() // graceful: waits for in-flight requests, then closes the backend
		return nil
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("server: %w", err)
	}
}

// loopbackURLs parses a comma-separated URL list and accepts only http(s) URLs
// whose host is the IPv4 loopback address 127.0.0.1.
func loopbackURLs(flagName, s string) ([]url.URL, error) {
	var out []url.URL
	for _, raw := range strings.Split(s, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", flagName, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, fmt.Errorf("--%s: %q: scheme must be http or https", flagName, raw)
		}
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil {
			return nil, fmt.Errorf("--%s: %q: %w", flagName, raw, err)
		}
		if host != "127.0.0.1" {
			return nil, fmt.Errorf("--%s: %q: only 127.0.0.1 is allowed", flagName, raw)
		}
		if port == "" {
			return nil, fmt.Errorf("--%s: %q: port required", flagName, raw)
		}
		if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
			return nil, fmt.Errorf("--%s: %q: no path, query or user info allowed", flagName, raw)
		}
		out = append(out, *u)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("--%s: no URLs", flagName)
	}
	return out, nil
}

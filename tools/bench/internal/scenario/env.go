// Package scenario runs the benchmark's scenarios — mtls, k8s, storm and
// rotation — each starting the servers under test as their own processes
// (the floor and Istio's CA server as subcommands of this binary, meshca
// from its own binary), driving them in turn with the same clients from
// package load, and returning the results as report tables.
package scenario

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/meshca/meshca/tools/bench/internal/csrapi"
	"github.com/meshca/meshca/tools/bench/internal/kube"
	"github.com/meshca/meshca/tools/bench/internal/meshca"
	"github.com/meshca/meshca/tools/bench/internal/peer"
	"github.com/meshca/meshca/tools/bench/internal/pki"
	"github.com/meshca/meshca/tools/bench/internal/proc"
)

// Options size the scenarios. Zero fields are not defaulted here: the
// command's flags carry the defaults.
type Options struct {
	// Clients is the number of clients, each with its own connection.
	Clients int
	// Rounds is how many times each server is measured, interleaved with
	// the others (floor, istio, meshca, floor, ...) so noise hits all.
	Rounds int
	// Warmup runs before each measured Duration, uncounted.
	Warmup, Duration time.Duration
	// StormRounds and StormCSRs are the storm's rounds and its fresh-token
	// CSRs per server and round.
	StormRounds, StormCSRs int
	// Rotation storm: workloads, connections, the deadline, and how many
	// storms each server gets, interleaved (at least one).
	RotationWorkloads, RotationConns int
	RotationDeadline                 time.Duration
	RotationRounds                   int
	// K8sModes are the meshca --k8s-attestation modes measured with tokens.
	K8sModes []string
	// TestenvBin holds kube-apiserver and etcd.
	TestenvBin string
	// MeshcaArgs are added to every `meshca server` command line (for
	// example --profiling, or a shedding setting under study).
	MeshcaArgs []string
	// MeshcaB, if set, is a second meshca binary that the mtls, k8s, storm
	// and rotation scenarios measure beside the first (in k8s and storm, in
	// each mode), in the same interleaved rounds: two builds compared on a
	// noisy machine.
	MeshcaB string
}

// Env is what the scenarios of one run share.
type Env struct {
	Opts Options
	// Work is the run's directory (CA files, data dirs, logs).
	Work string
	// Self is this binary, started as `serve floor|istio` for the peers.
	Self string
	// Meshca is the meshca binary.
	Meshca string
	// Log receives progress lines.
	Log io.Writer

	ca    *pki.CA
	caDir string
	kube  *kube.Env
	seq   int
}

// NewEnv generates the peers' CA under work.
func NewEnv(opts Options, work, self, meshcaBin string, log io.Writer) (*Env, error) {
	ca, err := pki.NewCA()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(work, "ca")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := ca.WriteFiles(dir); err != nil {
		return nil, err
	}
	return &Env{Opts: opts, Work: work, Self: self, Meshca: meshcaBin, Log: log, ca: ca, caDir: dir}, nil
}

// Close stops what the scenarios left running (the API server).
func (e *Env) Close() { e.StopKube() }

// StopKube stops the API server if it runs; Kube starts a new one.
func (e *Env) StopKube() {
	if e.kube != nil {
		e.kube.Stop()
		e.kube = nil
	}
}

func (e *Env) logf(format string, args ...any) {
	fmt.Fprintf(e.Log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// Kube returns the run's API server, starting it on first use.
func (e *Env) Kube() (*kube.Env, error) {
	if e.kube == nil {
		e.logf("starting kube-apiserver and etcd from %s", e.Opts.TestenvBin)
		k, err := kube.Start(e.Opts.TestenvBin, e.dir("kube"))
		if err != nil {
			return nil, err
		}
		e.kube = k
	}
	return e.kube, nil
}

// dir returns a new directory under the run's, named after name.
func (e *Env) dir(name string) string {
	e.seq++
	d := filepath.Join(e.Work, fmt.Sprintf("%02d-%s", e.seq, name))
	_ = os.MkdirAll(d, 0o700)
	return d
}

// target is one server under test and its clients' connections.
type target struct {
	name, cred string
	proc       *proc.Proc
	addr       string
	roots      *x509.CertPool
	conns      []*csrapi.Conn
	// meshca is set for meshca servers.
	meshca *meshca.Server
}

// close closes the connections and stops the server.
func (t *target) close() {
	for _, c := range t.conns {
		_ = c.Close()
	}
	t.conns = nil
	t.proc.Stop()
}

// closeAll closes every target.
func closeAll(targets []*target) {
	for _, t := range targets {
		t.close()
	}
}

// startPeer starts this binary as `serve kind` (floor or istio) on a free
// port, with Kubernetes tokens when kubeconfig is set.
func (e *Env) startPeer(name, cred, kind, kubeconfig string) (*target, error) {
	ports, err := proc.FreePorts(2)
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	args := []string{"serve", kind, "--dir", e.caDir, "--listen", addr}
	if slices.Contains(e.Opts.MeshcaArgs, "--profiling") {
		// Profile the peers too, to compare with meshca's.
		pprof := "127.0.0.1:" + strconv.Itoa(ports[1])
		args = append(args, "--pprof", pprof)
		e.logf("%s: Go profiler on http://%s/debug/pprof/", name, pprof)
	}
	if kubeconfig != "" {
		args = append(args, "--kubeconfig", kubeconfig)
	}
	p, err := proc.Start(name, filepath.Join(e.dir(kind), "server.log"), nil, e.Self, args...)
	if err != nil {
		return nil, err
	}
	if err := p.WaitReady(time.Minute, func() bool { return proc.Listening(addr) }); err != nil {
		p.Stop()
		return nil, err
	}
	roots, err := peer.Roots(e.caDir)
	if err != nil {
		p.Stop()
		return nil, err
	}
	return &target{name: name, cred: cred, proc: p, addr: addr, roots: roots}, nil
}

// startMeshcaBin starts the meshca binary bin as `meshca server
// --k8s-attestation mode`.
func (e *Env) startMeshcaBin(bin, name, cred, mode, kubeconfig string, admin bool) (*target, error) {
	s, err := meshca.Start(meshca.Config{Bin: bin, Dir: e.dir("meshca-" + mode), Mode: mode, Kubeconfig: kubeconfig, AdminAPI: admin, Extra: e.Opts.MeshcaArgs})
	if err != nil {
		return nil, err
	}
	return &target{name: name, cred: cred, proc: s.Proc, addr: s.GRPCAddr, roots: s.Roots, meshca: s}, nil
}

// dial opens n connections to t, connection i presenting certs[i] if
// certs is not nil, 32 handshakes at a time.
func (t *target) dial(ctx context.Context, n int, certs []tls.Certificate) error {
	t.conns = make([]*csrapi.Conn, n)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		sem   = make(chan struct{}, 32)
	)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			var cert *tls.Certificate
			if certs != nil {
				cert = &certs[i]
			}
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			c, err := csrapi.Dial(dctx, t.addr, t.roots, pki.ServerName, cert)
			mu.Lock()
			defer mu.Unlock()
			t.conns[i] = c
			if err != nil && first == nil {
				first = err
			}
		})
	}
	wg.Wait()
	if first != nil {
		for _, c := range t.conns {
			if c != nil {
				_ = c.Close()
			}
		}
		t.conns = nil
	}
	return first
}

// clientCerts issues an SVID under the peers' CA for each ID.
func (e *Env) clientCerts(ids []string) ([]tls.Certificate, error) {
	out := make([]tls.Certificate, len(ids))
	for i, id := range ids {
		c, err := e.ca.ClientCert(id)
		if err != nil {
			return nil, err
		}
		out[i] = c
	}
	return out, nil
}

// ids returns spiffe://cluster.local/ns/<ns>/sa/<prefix>-<i> for i < n,
// and the ServiceAccount names.
func ids(ns, prefix string, n int) (ids, names []string) {
	for i := range n {
		name := fmt.Sprintf("%s-%d", prefix, i)
		names = append(names, name)
		ids = append(ids, "spiffe://cluster.local/ns/"+ns+"/sa/"+name)
	}
	return ids, names
}

//go:build linux

package plane

import (
	"bytes"
	"context"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/ca/client"
	"github.com/meshca/meshca/ca/store/boltstore"
	"github.com/meshca/meshca/internal/pki"
)

// mountTmpfs mounts a tmpfs of size bytes on a new directory, so a test can
// fill it (disk full) or remount it read-only; it skips, saying why, where
// mounting is not allowed.
func mountTmpfs(t *testing.T, size string) (dir string, remount func(flags uintptr)) {
	t.Helper()
	dir = t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Skipf("storage drills need to mount a tmpfs (root, Linux): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir, func(flags uintptr) {
		if err := syscall.Mount("", dir, "", syscall.MS_REMOUNT|flags, ""); err != nil {
			t.Fatalf("remount: %v", err)
		}
	}
}

// drillPlane runs a plane whose data directory is dir, with a static token
// for one identity, and returns it with a CSR client.
func drillPlane(t *testing.T, dir string) (*Plane, func() (string, error)) {
	t.Helper()
	id := spiffeid.RequireFromString("spiffe://example.org/ns/web/sa/frontend")
	p, err := Start(context.Background(), Config{
		TrustDomain: id.TrustDomain(), DataDir: dir, GRPCAddr: "127.0.0.1:0", MonitorAddr: "127.0.0.1:0",
		Extra: []attestor.Attestor{attestor.NewStaticTokens(map[string]spiffeid.ID{"tok": id})},
	})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	for _, r := range p.Authority().Bundle().X509Authorities() {
		roots.AddCert(r)
	}
	c, err := client.New(client.Config{Addr: p.Addr("grpc").String(), Roots: roots, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	key, _ := pki.GenerateKey(pki.KeyECDSAP256)
	csr, _ := client.NewCSR(key, id)
	issue := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		chain, err := c.Sign(ctx, csr, time.Hour, "tok")
		if err != nil {
			return "", err
		}
		certs, err := pki.ParseCertificates([]byte(chain[0]))
		if err != nil {
			return "", err
		}
		return certs[0].SerialNumber.Text(16), nil
	}
	return p, issue
}

// waitReady polls /readyz (the store is probed at most once a second).
func waitReady(t *testing.T, p *Plane) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		code, body := readyz(t, p)
		if code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready again after the storage recovered: %d %s", code, body)
		}
	}
}

// checkRecords reopens the data file after the plane stopped: it must be
// consistent and hold every issuance the CA acknowledged.
func checkRecords(t *testing.T, dir string, acked []string) {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(dir, DataFile), boltstore.Options{})
	if err != nil {
		t.Fatalf("reopen the data file: %v", err)
	}
	defer st.Close()
	ctx := context.Background()
	if err := st.Check(ctx); err != nil {
		t.Fatalf("the data file is corrupt: %v", err)
	}
	for _, serial := range acked {
		if _, err := st.Issuance(ctx, serial); err != nil {
			t.Fatalf("acknowledged issuance %s lost: %v", serial, err)
		}
	}
}

// TestDrillDiskFull fills the data directory's file system under a running
// CA: issuance fails with Unavailable (a clear error, no certificate without
// its record), /readyz says why, nothing acknowledged is lost, the file
// stays consistent, and when space returns the CA is ready and issues again
// without a restart.
func TestDrillDiskFull(t *testing.T) {
	dir, _ := mountTmpfs(t, "4m")
	p, issue := drillPlane(t, dir)
	var acked []string
	first, err := issue()
	if err != nil {
		t.Fatal(err)
	}
	acked = append(acked, first)
	// Fill the file system, leaving nothing.
	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := filler.Write(chunk); err != nil {
			break
		}
	}
	for len(chunk) > 1 {
		chunk = chunk[:len(chunk)/2]
		for filler.Sync() == nil {
			if _, err := filler.Write(chunk); err != nil {
				break
			}
		}
	}
	filler.Close()
	var failure error
	for i := 0; i < 5000 && failure == nil; i++ {
		serial, err := issue()
		if err != nil {
			failure = err
			break
		}
		acked = append(acked, serial)
	}
	if failure == nil {
		t.Fatal("5000 issuances on a full disk all succeeded: the drill did not fill the disk")
	}
	if status.Code(failure) != codes.Unavailable || strings.Contains(failure.Error(), "no space") {
		t.Fatalf("issuance on a full disk = %v, want Unavailable without internals", failure)
	}
	if code, body := readyz(t, p); code != http.StatusServiceUnavailable || !strings.Contains(body, "no space left on device") {
		t.Fatalf("/readyz on a full disk = %d %q, want 503 naming the cause", code, body)
	}
	t.Logf("%d issuances recorded before the disk was full; refused with %v", len(acked), failure)

	os.Remove(filepath.Join(dir, "filler"))
	waitReady(t, p)
	serial, err := issue()
	if err != nil {
		t.Fatalf("issuance after space returned: %v", err)
	}
	acked = append(acked, serial)
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	checkRecords(t, dir, acked)
}

// TestDrillReadOnlyDataDir: a data directory on a read-only file system
// (Linux refuses to remount a file system read-only while the CA holds its
// data file open for writing, so this is the start-up case) is refused with
// a clear error and changes nothing; once writable, the same CA starts with
// every record.
func TestDrillReadOnlyDataDir(t *testing.T) {
	dir, remount := mountTmpfs(t, "16m")
	p, issue := drillPlane(t, dir)
	first, err := issue()
	if err != nil {
		t.Fatal(err)
	}
	roots := p.Authority().RootsPEM()
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	remount(syscall.MS_RDONLY)
	_, err = Start(context.Background(), Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), DataDir: dir})
	if err == nil || !strings.Contains(err.Error(), "read-only file system") {
		t.Fatalf("start on a read-only data directory = %v, want an error naming it", err)
	}
	remount(0)
	checkRecords(t, dir, []string{first})
	p, issue = drillPlane(t, dir)
	defer p.Stop()
	if !bytes.Equal(roots, p.Authority().RootsPEM()) {
		t.Fatal("the root changed")
	}
	if _, err := issue(); err != nil {
		t.Fatalf("issuance after the remount: %v", err)
	}
}

//go:build unix

package socket

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

func TestListenModes(t *testing.T) {
	old := syscall.Umask(0) // the most permissive umask must not widen anything
	t.Cleanup(func() { syscall.Umask(old) })

	dir := filepath.Join(t.TempDir(), "run", "meshca")
	path := filepath.Join(dir, "sds.sock")
	l, err := Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	if got := mode(t, dir); got != fs.ModeDir|0o700 {
		t.Errorf("directory mode = %v, want drwx------", got)
	}
	if got := mode(t, path); got != fs.ModeSocket|0o660 {
		t.Errorf("socket mode = %v, want Srw-rw----", got)
	}
	if got := l.Addr().String(); got != path {
		t.Errorf("Addr = %q, want %q", got, path)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the socket: %v", len(entries), entries)
	}

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file after Close: %v, want it removed", err)
	}
}

func TestListenRefuses(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir, path string)
		path    string // instead of dir/s.sock
		want    string
	}{
		{
			name: "world-writable directory",
			prepare: func(t *testing.T, dir, _ string) {
				mkdir(t, dir, 0o777)
			},
			want: "writable by group or others",
		},
		{
			name: "group-writable directory",
			prepare: func(t *testing.T, dir, _ string) {
				mkdir(t, dir, 0o770)
			},
			want: "writable by group or others",
		},
		{
			name: "directory owned by someone else",
			prepare: func(t *testing.T, dir, _ string) {
				if os.Geteuid() != 0 {
					t.Skip("needs root to chown")
				}
				mkdir(t, dir, 0o700)
				if err := os.Chown(dir, 4242, 4242); err != nil {
					t.Fatal(err)
				}
			},
			want: "owned by uid 4242",
		},
		{
			name: "parent is a file",
			prepare: func(t *testing.T, dir, _ string) {
				writeFile(t, dir)
			},
			want: "not a directory",
		},
		{
			name: "path is a regular file",
			prepare: func(t *testing.T, dir, path string) {
				mkdir(t, dir, 0o700)
				writeFile(t, path)
			},
			want: "is not a socket",
		},
		{
			name: "path is a directory",
			prepare: func(t *testing.T, dir, path string) {
				mkdir(t, dir, 0o700)
				mkdir(t, path, 0o700)
			},
			want: "is not a socket",
		},
		{
			name: "path is a live socket",
			prepare: func(t *testing.T, dir, path string) {
				mkdir(t, dir, 0o700)
				l, err := net.Listen("unix", path)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { l.Close() })
			},
			want: "in use",
		},
		{
			name:    "abstract socket name",
			prepare: func(*testing.T, string, string) {},
			path:    "@meshca",
			want:    "not a filesystem path",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "d")
			path := filepath.Join(dir, "s.sock")
			tt.prepare(t, dir, path)
			if tt.path != "" {
				path = tt.path
			}
			before, _ := os.Lstat(path)
			l, err := Listen(path, nil)
			if err == nil {
				l.Close()
				t.Fatal("Listen succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q, want it to contain %q", err, tt.want)
			}
			if before != nil {
				after, err := os.Lstat(path)
				if err != nil || !os.SameFile(before, after) {
					t.Errorf("Listen touched %s after refusing (%v)", path, err)
				}
			}
		})
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	mkdir(t, dir, 0o700)
	path := filepath.Join(dir, "s.sock")

	// A previous run that died: the socket file stays, nothing listens.
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	if mode(t, path).Type() != fs.ModeSocket {
		t.Fatal("stale socket file not left behind")
	}

	l, err := Listen(path, nil)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the new socket: %v", err)
	}
	c.Close()
}

func TestCloseLeavesAReplacement(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	path := filepath.Join(dir, "s.sock")
	l, err := Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Another agent replaced the file (its Listen would have refused while
	// ours answered; simulate an operator moving files around).
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path)
	l.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("Close removed a file it did not create: %v", err)
	}
}

func TestPeerCred(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("SO_PEERCRED is Linux only")
	}
	path := filepath.Join(t.TempDir(), "d", "s.sock")
	l, err := Listen(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	want := Cred{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}

	t.Run("accepted conn", func(t *testing.T) {
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sc, ok := <-accepted
		if !ok {
			t.Fatal("Accept failed")
		}
		defer sc.Close()
		got, ok := sc.(*Conn).PeerCred()
		if !ok || got != want {
			t.Errorf("PeerCred = %+v, %v; want %+v", got, ok, want)
		}
	})

	t.Run("grpc", func(t *testing.T) {
		var got Cred
		var gotOK bool
		g := grpc.NewServer(grpc.Creds(Credentials()), grpc.UnaryInterceptor(
			func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				got, gotOK = PeerCred(ctx)
				return h(ctx, req)
			}))
		healthpb.RegisterHealthServer(g, health.NewServer())
		go g.Serve(l)
		defer g.Stop()

		for _, tc := range []struct {
			name string
			opt  grpc.DialOption
		}{
			{"client with Credentials", grpc.WithTransportCredentials(Credentials())},
			{"insecure client", grpc.WithTransportCredentials(insecure.NewCredentials())},
		} {
			got, gotOK = Cred{}, false
			cc, err := grpc.NewClient("unix://"+path, tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			_, err = healthpb.NewHealthClient(cc).Check(t.Context(), &healthpb.HealthCheckRequest{})
			cc.Close()
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if !gotOK || got != want {
				t.Errorf("%s: PeerCred(ctx) = %+v, %v; want %+v", tc.name, got, gotOK, want)
			}
		}
	})
}

func TestPeerCredWithoutCredentials(t *testing.T) {
	if _, ok := PeerCred(context.Background()); ok {
		t.Error("PeerCred on a context without a peer reported credentials")
	}
}

func mkdir(t *testing.T, dir string, perm fs.FileMode) {
	t.Helper()
	if err := os.Mkdir(dir, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, perm); err != nil { // past the umask
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// Package socket creates the agent's Unix domain sockets safely and tells a
// server who is at the other end of each connection.
//
// Listen puts the socket in a directory the agent owns, replaces a stale
// socket left by a previous run (never a live one, never a file that is not a
// socket), and makes the socket mode 0660 before any other process can reach
// it: the socket is bound in a fresh 0700 directory, chmodded, checked and
// then renamed into place, so the process umask does not matter and no
// process-wide umask is changed. Every accepted connection carries the
// peer's pid, uid and gid (SO_PEERCRED), logged at Debug; with Credentials
// as the gRPC server's transport credentials a handler reads them with
// PeerCred(ctx).
//
// Who may connect is decided by the directory and socket modes: a directory
// Listen creates is 0700, so only the agent's user can connect. To let
// Envoy run as another user, create the directory beforehand, owned by the
// agent's user and mode 0750 with a group both share (Listen refuses a
// directory others may write to, or that another user owns).
package socket

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Mode is the permission of a socket Listen creates: the owner and the
// owner's group may connect.
const Mode fs.FileMode = 0o660

// dirMode is the permission of a directory Listen creates.
const dirMode fs.FileMode = 0o700

// maxPathLen is the longest socket path Linux accepts (sun_path is 108
// bytes with the terminating NUL).
const maxPathLen = 107

// staleProbeTimeout bounds the connect that tells a live socket from a
// stale one.
const staleProbeTimeout = time.Second

// ErrInUse is returned when a server already answers on the socket path.
var ErrInUse = errors.New("socket: in use")

// Listen creates the parent directory of path (mode 0700) if it is missing,
// replaces a stale socket at path, and listens there with mode 0660. The
// returned listener's connections are *Conn values carrying the peer's
// credentials; closing the listener removes the socket file unless another
// file has replaced it. log may be nil.
func Listen(path string, log *slog.Logger) (net.Listener, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if path == "" || strings.HasPrefix(path, "@") {
		return nil, fmt.Errorf("socket: %q is not a filesystem path", path)
	}
	path = filepath.Clean(path)
	dir := filepath.Dir(path)
	if err := ensureDir(dir); err != nil {
		return nil, err
	}
	if err := checkStale(path); err != nil {
		return nil, err
	}

	// Bind in a private directory so that nothing can connect before the
	// mode is right, then move the socket into place. The temporary path
	// is dir + "/.NNNNNNNNNN/s".
	tmpDir, err := os.MkdirTemp(dir, ".")
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	defer os.Remove(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	if len(tmp) > maxPathLen || len(path) > maxPathLen {
		return nil, fmt.Errorf("socket: path %q is too long for a Unix socket (with the %d bytes Listen needs to bind safely)", path, len(tmp)-len(path))
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	ul.SetUnlinkOnClose(false) // the file moves; Close removes it by its final name
	fail := func(err error) (net.Listener, error) {
		_ = ul.Close() // the error above is the one to report
		_ = os.Remove(tmp)
		return nil, err
	}
	if err := os.Chmod(tmp, Mode); err != nil {
		return fail(fmt.Errorf("socket: %w", err))
	}
	fi, err := os.Lstat(tmp)
	if err != nil {
		return fail(fmt.Errorf("socket: %w", err))
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != Mode {
		return fail(fmt.Errorf("socket: %s has mode %v after chmod, want %v", tmp, fi.Mode(), fs.ModeSocket|Mode))
	}
	// rename(2) replaces a stale socket atomically: no moment without one.
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("socket: %w", err))
	}
	log.Info("socket: listening", "path", path, "mode", Mode.String())
	return &listener{UnixListener: ul, path: path, file: fi, log: log}, nil
}

// ensureDir creates dir 0700 when it does not exist, and otherwise checks
// that it is a directory owned by this user that no one else may write to.
func ensureDir(dir string) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, dirMode); err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("socket: %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("socket: directory %s is writable by group or others (mode %v); refusing to put a socket there", dir, fi.Mode().Perm())
	}
	if uid, ok := ownerUID(fi); ok && uid != os.Geteuid() {
		return fmt.Errorf("socket: directory %s is owned by uid %d, not by this process (uid %d)", dir, uid, os.Geteuid())
	}
	return nil
}

// checkStale returns nil when path does not exist or is a socket nothing
// answers on (rename will replace it), and an error otherwise.
func checkStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("socket: %s exists and is not a socket (%v); refusing to replace it", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, staleProbeTimeout)
	if err == nil {
		_ = c.Close() // refused connection
		return fmt.Errorf("%w: a server answers on %s", ErrInUse, path)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil // stale: left by a process that is gone
	}
	return fmt.Errorf("socket: cannot tell whether %s is stale: %w", path, err)
}

type listener struct {
	*net.UnixListener
	path  string
	file  fs.FileInfo // the socket file as created, to recognise it on Close
	log   *slog.Logger
	close sync.Once
}

// Accept waits for a connection and returns it as a *Conn.
func (l *listener) Accept() (net.Conn, error) {
	c, err := l.AcceptUnix()
	if err != nil {
		return nil, err
	}
	cred, err := peerCred(c)
	if err != nil {
		// The credentials are for logging and attestation; a platform
		// without SO_PEERCRED still serves.
		l.log.Debug("socket: peer credentials unavailable", "path", l.path, "err", err)
		return &Conn{UnixConn: c}, nil
	}
	l.log.Debug("socket: connection", "path", l.path, "pid", cred.PID, "uid", cred.UID, "gid", cred.GID)
	return &Conn{UnixConn: c, cred: cred, credOK: true}, nil
}

// Addr returns the socket's final path (it was bound under another name).
func (l *listener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

// Close stops listening and removes the socket file if it is still the one
// Listen created.
func (l *listener) Close() error {
	err := l.UnixListener.Close()
	l.close.Do(func() {
		if fi, err := os.Lstat(l.path); err == nil && os.SameFile(fi, l.file) {
			_ = os.Remove(l.path) // best effort: a stale socket is replaced at the next Listen
		}
	})
	return err
}

// Cred is what the kernel says about the process at the other end of a
// connection, as of when it connected.
type Cred struct {
	PID int32
	UID uint32
	GID uint32
}

// Conn is a connection accepted by a Listen listener.
type Conn struct {
	*net.UnixConn
	cred   Cred
	credOK bool
}

// PeerCred returns the peer's credentials; ok is false on platforms
// without SO_PEERCRED.
func (c *Conn) PeerCred() (cred Cred, ok bool) { return c.cred, c.credOK }

// AuthInfo is the gRPC AuthInfo of a connection handshaken by Credentials.
type AuthInfo struct {
	credentials.CommonAuthInfo
	// Cred is the peer's credentials; CredOK says whether they are known.
	Cred   Cred
	CredOK bool
}

// AuthType implements credentials.AuthInfo.
func (AuthInfo) AuthType() string { return authType }

const authType = "unix-peercred"

// Credentials returns gRPC transport credentials for servers on a Listen
// listener (and clients of them): no encryption, which a local socket does
// not need, and the peer's pid, uid and gid in the AuthInfo.
func Credentials() credentials.TransportCredentials { return transportCreds{} }

// PeerCred returns the credentials of the process that made the gRPC call
// in ctx, on a server using Credentials.
func PeerCred(ctx context.Context) (Cred, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Cred{}, false
	}
	ai, ok := p.AuthInfo.(AuthInfo)
	if !ok || !ai.CredOK {
		return Cred{}, false
	}
	return ai.Cred, true
}

type transportCreds struct{}

func (transportCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return handshake(c)
}

func (transportCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return handshake(c)
}

// handshake reads the peer's credentials: from a *Conn when Listen accepted
// it, from the socket itself for any other Unix connection.
func handshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	// Like grpc's local credentials: a Unix socket is not observable by
	// others, so calls that require transport security may use it.
	ai := AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
	switch c := c.(type) {
	case *Conn:
		ai.Cred, ai.CredOK = c.PeerCred()
	case *net.UnixConn:
		cred, err := peerCred(c)
		ai.Cred, ai.CredOK = cred, err == nil
	default:
		return nil, nil, fmt.Errorf("socket: %T is not a Unix socket connection", c)
	}
	return c, ai, nil
}

func (transportCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: authType}
}

func (t transportCreds) Clone() credentials.TransportCredentials { return t }

func (transportCreds) OverrideServerName(string) error { return nil }

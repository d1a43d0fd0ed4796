// Package files writes files atomically and reads secrets kept in files:
// tokens and keys whose mode must keep other users out.
package files

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Token returns the random token stored at path, creating one (0600) on
// first use so that every run sees the same token.
func Token(path string) (string, error) {
	if err := CheckSecretMode(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	b, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	tok := base64.RawURLEncoding.EncodeToString(raw[:])
	return tok, WriteAtomic(path, []byte(tok+"\n"), 0o600)
}

// WriteAtomic writes data to path with the given mode: to a temporary file
// in the same directory, synced, then renamed over path, so a reader sees
// the old content or the new, never a part.
func WriteAtomic(path string, data []byte, mode fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		_ = tmp.Close() // the write error is the one to report
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// CheckSecretMode refuses a secret file that others may read. Group-read is
// allowed: a Kubernetes Secret volume with an fsGroup is 0440 at best.
func CheckSecretMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o007 != 0 {
		return fmt.Errorf("%s is readable by others (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	return nil
}

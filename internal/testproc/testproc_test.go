package testproc

import (
	"os"
	"strings"
	"testing"
)

func TestFindBinaries(t *testing.T) {
	t.Setenv(EnvBinDir, t.TempDir())
	_, err := FindBinaries("kube-apiserver")
	if err == nil || !strings.Contains(err.Error(), "no executable kube-apiserver") {
		t.Fatalf("FindBinaries with an empty dir: err = %v", err)
	}
	t.Setenv(EnvBinDir, "")
	if _, err := RepoRoot(); err != nil {
		wd, _ := os.Getwd()
		t.Fatalf("RepoRoot from %s: %v", wd, err)
	}
}

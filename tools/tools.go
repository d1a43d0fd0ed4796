//go:build tools

// Package tools pins the programs built by `make testenv` so that go.mod and
// go.sum hold their exact dependency graph. It is never compiled into anything.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)

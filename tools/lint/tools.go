//go:build tools

// Package lint pins the linters `make lint` runs, with their whole module
// graph in go.sum, so every machine lints with exactly the same versions.
package lint

import (
	_ "github.com/golangci/golangci-lint/v2/cmd/golangci-lint"
	_ "honnef.co/go/tools/cmd/staticcheck"
)

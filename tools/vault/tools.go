//go:build tools

// Package tools pins the Vault server that meshca's Vault integration tests
// run against (make vault builds it into .testenv/bin/vault).
package tools

import _ "github.com/hashicorp/vault"

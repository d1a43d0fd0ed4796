#!/usr/bin/env bash
# Builds Vault v1.14.0 (the last MPL-2.0 release) into $1 for meshca's Vault
# integration tests. Vault as a dependency ignores its own `replace ./sdk`,
# and the SDK version it pins lacks two symbols that v1.14.0 calls. overlay/
# supplies them (our own code): they are added to a copy of that SDK in
# $2 (default: next to $1), which a throwaway go.work puts in its place.
set -euo pipefail
out=$(realpath -m "$1")
sdkcopy=$(realpath -m "${2:-$(dirname "$out")/../vault-sdk}")
cd "$(dirname "$0")"
here=$(pwd)
mod=github.com/hashicorp/vault/sdk
ver=$(go list -mod=readonly -m -f '{{.Version}}' $mod)
go mod download $mod
src=$(go list -mod=readonly -m -f '{{.Dir}}' $mod)
if [ ! -f "$sdkcopy/.version" ] || [ "$(cat "$sdkcopy/.version")" != "$ver" ]; then
  rm -rf "$sdkcopy"; mkdir -p "$sdkcopy"
  cp -r "$src"/. "$sdkcopy"/; chmod -R u+w "$sdkcopy"
  echo "$ver" >"$sdkcopy/.version"
fi
cp overlay/certutil_basicconstraints.go "$sdkcopy/helper/certutil/zz_meshca_basicconstraints.go"
cp overlay/keysutil_wrapkey.go "$sdkcopy/helper/keysutil/zz_meshca_wrapkey.go"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/go.work" <<WORK
go 1.26

godebug x509negativeserial=1

use $here

replace $mod $ver => $sdkcopy
WORK
GOWORK="$work/go.work" CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$out" github.com/hashicorp/vault
"$out" version

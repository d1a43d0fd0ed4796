// Command bench is meshca's end-to-end benchmark: each server under test
// runs as its own process on 127.0.0.1 — a floor server (CSR check and
// x509.CreateCertificate, nothing else), Istio's CA server (istiod's
// handler and authenticators) and `meshca server` built from this
// repository — and the same clients drive each in turn. It reports CSR/s,
// server CPU per CSR (from /proc), latency percentiles, errors by gRPC
// code and peak memory, as Markdown tables with ratios against the floor.
//
// Usage:
//
//	bench [flags]                    run the scenarios (bench -h)
//	bench serve floor|istio [flags]  one peer server (started by the above)
//
// `make bench-e2e` builds what it needs and runs it.
package main

import (
	"fmt"
	"os"
)

func main() {
	var err error
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		err = serve(os.Args[2:])
	} else {
		err = run(os.Args[1:])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// Command meshca is the one binary of meshca: `server` (the CA), `agent`
// (SDS and the SPIFFE Workload API beside a workload), `dev` (both, for a
// local identity plane), `token`, `revoke`, `audit` and `version`.
//
// This package only turns flags, MESHCA_* environment variables and the
// --config file into the Config structs of the packages that do the work
// (ca/plane, sds/agent, internal/dev, ca/adminclient, internal/audit,
// policy) and calls them; internal/archtest keeps it that way.
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

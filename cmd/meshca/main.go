// Command meshca is the one binary of meshca: the CA server, the local
// development identity plane, and (as they land) the agent and audit tools.
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

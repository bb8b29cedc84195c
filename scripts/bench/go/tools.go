//go:build tools

// Package tools pins the benchmark's load generator (vegeta) in this wrapper
// module's go.mod/go.sum, so scripts/bench/build-tools.sh builds the same
// version on every machine.
package tools

import _ "github.com/tsenart/vegeta/v12"

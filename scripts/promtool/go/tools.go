//go:build tools

// Package tools pins promtool (github.com/prometheus/prometheus/cmd/promtool)
// in this wrapper module's go.mod/go.sum, so scripts/promtool/build.sh builds
// the same version on every machine. The tests run `promtool test rules`
// against the chart's alert rules.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"

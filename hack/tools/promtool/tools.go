//go:build tools

// Package tools pins promtool (Prometheus' rule checker and rule unit tester) so
// `go mod tidy` keeps its dependency graph in go.sum. The chart's alerts are tested
// with `promtool test rules`.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"

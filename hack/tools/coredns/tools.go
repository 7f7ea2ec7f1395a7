//go:build tools

// Package tools pins the CoreDNS command (the cluster DNS of the real node) so
// `go mod tidy` keeps its dependency graph in go.sum.
package tools

import _ "github.com/coredns/coredns"

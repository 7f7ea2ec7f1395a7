//go:build tools

// Package tools pins the control plane's and the node's commands so `go mod tidy`
// keeps their dependency graph in go.sum. One module for all of them: the same
// versions everywhere, and one Go build cache shared by their common packages.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)

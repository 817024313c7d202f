//go:build tools

// Package tools pins the hubble CLI's command so that `go mod tidy` keeps its dependencies.
package tools

import _ "github.com/cilium/cilium/hubble/cmd"

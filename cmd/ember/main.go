// Command ember is both the ember daemon (`ember daemon`) and its CLI.
package main

import (
	"os"

	"github.com/emberhq/ember/internal/cli"
)

func main() { os.Exit(cli.Main(os.Args[1:])) }

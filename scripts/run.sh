#!/bin/bash
# make run: start ember's daemon if needed, boot a VM from the built-in image
# `tiny` and show it answering. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
EMBER=./bin/ember
log=${EMBER_LOG:-/tmp/ember-daemon.log}
if ! $EMBER ls >/dev/null 2>&1; then
	echo "starting the daemon (log: $log)"
	setsid nohup $EMBER daemon >"$log" 2>&1 < /dev/null &
	for _ in $(seq 50); do $EMBER ls >/dev/null 2>&1 && break; sleep 0.1; done
	$EMBER ls >/dev/null || { echo "the daemon did not start; see $log" >&2; tail -20 "$log" >&2; exit 1; }
fi
$EMBER doctor || true
echo
if $EMBER inspect demo >/dev/null 2>&1; then
	$EMBER start demo >/dev/null 2>&1 || true
else
	echo "creating VM demo (the first run fetches the guest kernel and builds the image)"
	time $EMBER create demo
fi
echo
echo "\$ ember exec demo -- uname -a"
$EMBER exec demo -- uname -a
echo "\$ ember exec demo -- cat /etc/os-release"
$EMBER exec demo -- cat /etc/os-release
echo
$EMBER ls
cat <<'MSG'

ember is running. `make install` puts ember on your PATH. Try next:
  ./bin/ember shell demo              a persistent shell in the VM (detach: Ctrl-P Ctrl-Q)
  ./bin/ember exec -it demo -- sh     a one-off shell
  ./bin/ember create web1             another VM
  ./bin/ember create dev --image debian   Debian 12 with apt (the first one builds the image, about a minute)
  ./bin/ember ls                      your VMs
  ./bin/ember web                     the web dashboard's address (open it in a browser on this host)
  ./bin/ember rm -f demo              delete it
  make stop                           delete demo and stop the daemon
MSG

#!/usr/bin/env bash
# The main job on this machine: installs what is missing, starts a local nats-server (on
# loopback, temporary store) and om-projector, runs the seed document's walkthrough with
# the om CLI, then shows `om net status`. Everything it started is stopped at the end
# (set OM_DEMO_KEEP=1 to keep the server and projector running).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

port=${OM_DEMO_PORT:-4222}
if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fi
store=$(mktemp -d /tmp/om-demo.XXXXXX)
export OM_NATS_URL=nats://127.0.0.1:$port OM_CLUSTER=demo PATH="$PWD/target/release:$PATH"

nats-server -js -a 127.0.0.1 -p "$port" -sd "$store" >"$store/nats.log" 2>&1 &
nats_pid=$!
cleanup() {
  [ -n "${OM_DEMO_KEEP:-}" ] && { echo "kept running: nats-server (pid $nats_pid) on $OM_NATS_URL, om-projector (pid ${proj_pid:-?}); logs in $store"; return; }
  kill "${proj_pid:-}" "$nats_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$store"
}
trap cleanup EXIT
# Bounded readiness probe: the server answers on its port.
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done

run() { printf '\n$ %s\n' "$*"; "$@"; }
run om cluster set --kw "cluster.nodes=node1 node2 node3"
om-projector >"$store/projector.log" 2>&1 &
proj_pid=$!
run om cluster set --kw network#local1.type=bridge --kw network#local1.network=10.10.10.0/24
run om cluster set --kw network#backend1.type=routed_bridge \
                   --kw network#backend1.network=10.11.0.0/16 \
                   --kw network#backend1.ips_per_node=1024
run om cluster set --kw network#backend1.addr@node1=1.2.3.4 \
                   --kw network#backend1.addr@node2=1.2.3.5 \
                   --kw network#backend1.addr@node3=1.2.4.4
run om cluster set --kw network#backend1.tunnel=always
run om cluster set --kw network#weave1.type=weave --kw network#weave1.network=10.32.0.0/12
run om cluster get --kw network#backend1.subnet@node2
run om net ls
run om net status
run om net status --verbose --name backend1

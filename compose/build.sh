#!/usr/bin/env bash
# Builds the local images (nothing can be pulled here): `om-nats` from the static
# nats-server binary, `om` from the release binaries plus the shared libraries they link
# (listed by ldd), both FROM scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$(readlink -f /usr/local/bin/nats-server)" "$ctx/nats-server"
printf 'FROM scratch\nCOPY nats-server /nats-server\nEXPOSE 4222\nENTRYPOINT ["/nats-server"]\n' >"$ctx/Dockerfile.nats"
docker build -q -t om-nats:local -f "$ctx/Dockerfile.nats" "$ctx"
mkdir -p "$ctx/root/bin"
for b in om om-projector om-node; do cp "target/release/$b" "$ctx/root/bin/"; done
for lib in $(ldd target/release/om-projector target/release/om-node target/release/om | awk '/=>/ {print $3} /ld-linux/ {print $1}' | sort -u); do
  mkdir -p "$ctx/root$(dirname "$lib")"
  cp -L "$lib" "$ctx/root$lib"
done
printf 'FROM scratch\nCOPY root/ /\nENV PATH=/bin\nENTRYPOINT ["/bin/om-projector"]\n' >"$ctx/Dockerfile.om"
docker build -q -t om:local -f "$ctx/Dockerfile.om" "$ctx"
echo "built om-nats:local and om:local; run: docker-compose -f compose/docker-compose.yml up -d"

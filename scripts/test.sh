#!/usr/bin/env bash
# The project's test command: installs what is missing, then runs every test (unit, crate,
# real nats-server, network namespaces). Tests that cannot run here print SKIPPED with why.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export NATS_SERVER_BIN=/usr/local/bin/nats-server
export OM_BIN_DIR="$PWD/target/release"
export OM_SKIP_FILE="$PWD/target/skipped.txt"
rm -f "$OM_SKIP_FILE"
# Real-server tests share two cores: keep test binaries from starving each other.
set +e
cargo test --release --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee target/test-output.txt
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary. A test that skipped itself at run time (see
# tests/src/skip.rs) passed in libtest's eyes; it is counted here as skipped.
skipped_rt=$( [ -f "$OM_SKIP_FILE" ] && wc -l < "$OM_SKIP_FILE" || echo 0 )
awk -v rt="$skipped_rt" '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p - rt, f, i + rt }' target/test-output.txt
if [ "$skipped_rt" -gt 0 ]; then echo "skipped at run time:" >&2; sed 's/^/  /' "$OM_SKIP_FILE" >&2; fi
exit "$status"

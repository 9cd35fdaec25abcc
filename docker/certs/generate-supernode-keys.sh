#!/usr/bin/env bash
# Generate SuperNode authentication key pairs (ECDSA P-384, OpenSSH format).
#
#   docker/certs/generate-supernode-keys.sh [NUM_SUPERNODES] [OUT_DIR]
#
# Writes OUT_DIR/supernode-<i> (private key, given to that SuperNode with
# --auth-supernode-private-key) and OUT_DIR/supernode-<i>.pub (registered on
# the SuperLink with `flwr supernode register OUT_DIR/supernode-<i>.pub <connection>`).
# OUT_DIR defaults to docker/certs/supernode-keys.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
num="${1:-3}"
out="${2:-$here/supernode-keys}"
mkdir -p "$out"
for i in $(seq 1 "$num"); do
  rm -f "$out/supernode-$i" "$out/supernode-$i.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedalign-supernode-$i" -f "$out/supernode-$i"
  # Readable by the container user `app` (compose secrets keep host permissions).
  chmod 644 "$out/supernode-$i"
done
echo "wrote $num SuperNode key pairs to $out"

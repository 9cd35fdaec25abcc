#!/usr/bin/env bash
# Generate a throw-away CA and a SuperLink server certificate with openssl.
#
#   docker/certs/generate.sh [OUT_DIR] [EXTRA_SAN ...]
#
# OUT_DIR defaults to docker/certs/superlink-certificates. The server
# certificate is valid for localhost, 127.0.0.1, ::1, the compose service
# names (superlink, supernode-1..8) and every EXTRA_SAN: pass the host name or
# IP address other machines use to reach the SuperLink, e.g.
#   docker/certs/generate.sh docker/certs/superlink-certificates 192.168.1.20 link.example.org
# Files: ca.crt, ca.key, server.pem, server.key (P-384 keys; server.pem signed by ca.crt).
# Self-signed certificates are for tests and private clusters; use your
# organisation's CA in production.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/superlink-certificates}"
shift || true
days="${CERT_DAYS:-365}"
mkdir -p "$out"

sans="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:superlink"
for i in 1 2 3 4 5 6 7 8; do sans="$sans,DNS:supernode-$i"; done
for extra in "$@"; do
  if [[ "$extra" =~ ^[0-9.]+$ || "$extra" == *:* ]]; then sans="$sans,IP:$extra"; else sans="$sans,DNS:$extra"; fi
done

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$out/ca.key"
openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$days" \
  -subj "/O=fedalign/CN=fedalign test CA" -out "$out/ca.crt"

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$out/server.key"
openssl req -new -key "$out/server.key" -subj "/O=fedalign/CN=superlink" -out "$out/server.csr"
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
  "$sans" > "$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -days "$days" -sha256 -extfile "$out/server.ext" -out "$out/server.pem" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext" "$out/ca.srl"
chmod 600 "$out/ca.key"
# server.key stays readable: the SuperLink container runs as user `app` and
# reads it through a compose secret (a bind mount that keeps host permissions).
chmod 644 "$out/server.key"
echo "certificates written to $out (SANs: $sans)"

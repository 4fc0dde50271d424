#!/usr/bin/env bash
# `nginx -t` on the proxy configuration (docker/nginx), without root: once as flashkv.conf is meant
# to be included (an http block of our own, the shipped flashkv-listen.inc), once as the shipped
# dedicated nginx.conf; both from a temporary prefix, the replicas on loopback so nothing needs
# resolving. Fails when nginx is missing (scripts/setup.sh installs it).
#   tests/deploy/nginx_config_test.sh REPO
set -euo pipefail

repo=${1:?usage: $0 REPO}
nginx=$(PATH=$PATH:/usr/sbin command -v nginx) ||
  { echo "nginx is missing (scripts/setup.sh installs it)" >&2 && exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/flashkv-nginx-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"

# Runs nginx -t on PREFIX/nginx.conf as the invoking user, or as nobody under root.
check() {
  local prefix=$1 as=()
  mkdir -p "$prefix/logs" "$prefix/tmp"
  if (($(id -u) == 0)); then
    chown -R nobody:nogroup "$prefix"
    as=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
  fi
  "${as[@]}" "$nginx" -t -p "$prefix" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log"
}

temp_paths() {
  local prefix=$1 kind
  for kind in client_body proxy fastcgi uwsgi scgi; do
    echo "    ${kind}_temp_path $prefix/tmp/$kind;"
  done
}

# 1. flashkv.conf included in an http block, the way a host's nginx uses it.
included=$work/included
mkdir -p "$included"
cp "$repo/docker/nginx/flashkv.conf" "$repo/docker/nginx/flashkv-listen.inc" "$included/"
printf 'server 127.0.0.1:%d;\n' 50061 50062 50063 >"$included/flashkv-upstreams.inc"
cat >"$included/nginx.conf" <<EOF
pid $included/nginx.pid;
error_log $included/logs/error.log;
events {}
http {
$(temp_paths "$included")
    include flashkv.conf;
    access_log $included/logs/routing.log flashkv_routing;
}
EOF
check "$included"

# 2. The dedicated proxy's nginx.conf as shipped, only its absolute paths moved into the prefix.
dedicated=$work/dedicated
mkdir -p "$dedicated"
cp "$repo/docker/nginx/"{nginx.conf,flashkv.conf,flashkv-listen.inc} "$dedicated/"
sed -i -e "s|/run/nginx-flashkv.pid|$dedicated/nginx.pid|" \
  -e "s|/var/log/nginx/|$dedicated/logs/|g" \
  -e "s|^http {|http {\n$(temp_paths "$dedicated" | sed 's/$/\\n/' | tr -d '\n')|" \
  "$dedicated/nginx.conf"
sed -E 's/flashkv-[0-9]+:50051/127.0.0.1:50051/' "$repo/docker/nginx/flashkv-upstreams.inc" \
  >"$dedicated/flashkv-upstreams.inc"
check "$dedicated"
echo "nginx -t: both configurations are valid"

#!/bin/sh
# CI stand-in entry point: `redis-server ...` as the official redis image runs it (protected
# mode off, as that image builds it), `server ...` as the minio image, anything else as is.
set -eu
case "${1:-}" in
  redis-server) shift; exec redis-server --protected-mode no "$@" ;;
  server) exec minio "$@" ;;
  *) exec "$@" ;;
esac

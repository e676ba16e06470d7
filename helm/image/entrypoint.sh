#!/bin/sh
# phpo image entry point: the first argument names the part to run.
#   server [OPTIONS]   phpo server on 0.0.0.0:8080 (PHPO_* variables configure it)
#   migrate            phpo server migrate (the Helm chart's pre-install/pre-upgrade Job)
#   agent [OPTIONS]    phpo agent (PHPO_URL and PHPO_TOKEN name the server and its agent token)
#   client ARGS        the phpo client (phpo ARGS)
#   mlflow ARGS        the MLflow tracking server (mlflow ARGS)
#   anything else      run as given
set -e
cmd="${1:-server}"
[ $# -gt 0 ] && shift
case "$cmd" in
  server)  exec phpo server --host "${PHPO_HOST:-0.0.0.0}" --port "${PHPO_PORT:-8080}" "$@" ;;
  migrate) exec phpo server migrate "$@" ;;
  agent)   exec phpo agent "$@" ;;
  client)  exec phpo "$@" ;;
  mlflow)  exec mlflow "$@" ;;
  *)       exec "$cmd" "$@" ;;
esac

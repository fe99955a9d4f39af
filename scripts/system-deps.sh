#!/usr/bin/env bash
# Install Debian packages that gradcheck uses from outside Python, if they are missing:
#   graphviz  -> the 'dot' binary that lays out the graphs (gradcheck degrades gracefully without it)
#   chromium  -> only with --browser: the test suite opens the HTML report in headless Chromium
# Needs root (or sudo) and apt-get; elsewhere it says what to install and carries on.
set -euo pipefail
want=()
command -v dot >/dev/null 2>&1 || want+=(graphviz)
if [ "${1:-}" = "--browser" ]; then
  command -v chromium >/dev/null 2>&1 || want+=(chromium fonts-dejavu-core)
fi
[ ${#want[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "gradcheck setup: please install ${want[*]} with your package manager" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "gradcheck setup: not root; please install ${want[*]} (apt-get install ${want[*]})" >&2
    exit 0
  fi
fi
echo "gradcheck setup: installing ${want[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null

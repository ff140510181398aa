#!/usr/bin/env bash
# Debian packages that some integration tests run for real: headless Chromium (the compliance page
# test), Prometheus and the Prometheus Pushgateway (the FinOps usage and metrics tests).
# Installed only when they are missing AND this runs as root with apt-get (a CI runner, a dev
# container); elsewhere the tests that need them skip, saying which package is missing.
# Set XAC_SKIP_SYSTEM_PACKAGES=1 to never touch the system.
set -uo pipefail
declare -A wanted=([chromium]=/usr/bin/chromium [prometheus]=/usr/bin/prometheus
  [prometheus-pushgateway]=/usr/bin/prometheus-pushgateway)
missing=()
for package in "${!wanted[@]}"; do
  [ -x "${wanted[$package]}" ] || missing+=("$package")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "${XAC_SKIP_SYSTEM_PACKAGES:-0}" = "1" ] || [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "note: ${missing[*]} not installed (needs root + apt-get): the tests that use them will skip" >&2
  exit 0
fi
echo "installing Debian packages for the integration tests: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || echo "note: apt-get could not install ${missing[*]}: the tests that use them will skip" >&2
exit 0

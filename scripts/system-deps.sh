#!/usr/bin/env bash
# Debian packages the test suite and benchmarks use beside PyPI and npm: Janus (the second media
# backend), espeak-ng and Festival (synthesized speech for media and transcription tests).
# Installs what is missing when it can (root with apt-get); otherwise says what to install.
set -euo pipefail
need=()
command -v janus >/dev/null || need+=(janus)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v text2wave >/dev/null || need+=(festival)
[ -d /usr/share/festival/voices/english/kal_diphone ] || need+=(festvox-kallpc16k)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
else
  echo "missing Debian packages (tests that need them are skipped): ${need[*]}" >&2
fi

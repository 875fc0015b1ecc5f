#!/usr/bin/env bash
# Debian packages for the test suite's local SLURM cluster (tests/cluster/local_slurm.py starts and stops
# the daemons itself; installing them starts nothing that the tests rely on). Needs root.
set -euo pipefail
packages=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

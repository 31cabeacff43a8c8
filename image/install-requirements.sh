#!/bin/sh
# Install one group of image/requirements.lock into the image's venv (/opt/salesfc/venv); image/Containerfile runs
# it once per group, each in its own RUN, so that each group is its own layer:
#
#   cuda    the nvidia-* and cuda-* wheels (~3 GB)    change only with the CUDA version
#   torch   torch and triton (~2 GB)                  change with the torch version
#   rest    everything else, then the import check    change with any other pin
#
# Why layers: a registry pull fetches them in parallel and a new salesfc version reuses the big ones; and a build
# never has to copy and commit the whole ~6 GB at once (it ran a CI machine out of disk when it did).
#
# The first call creates the venv. When the base image's own python already imports torch (a CUDA base such as
# pytorch/pytorch or an OpenShift AI training image: torch built for its CUDA, its cuDNN and its drivers), the
# venv sees the base's site-packages through a .pth file, appended after its own (so the lock's pins of everything
# else take precedence), and the cuda and torch groups install nothing. A .pth rather than
# `venv --system-site-packages`, because the latter cannot see a base whose python is itself a venv (OpenShift AI's
# /opt/app-root).
#
# pip settings come from PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX and PIP_CERT (build arguments; empty ones are
# dropped so that pip keeps its defaults).
set -eu

group="${1:-}"
venv=/opt/salesfc/venv
lock=/opt/salesfc/requirements.lock
base_pth=zz-base-image.pth

for name in PIP_INDEX_URL PIP_FIND_LINKS PIP_NO_INDEX PIP_CERT; do
    eval "value=\${$name:-}"
    [ -n "$value" ] || unset "$name"
done

base_python=""
if [ ! -x "$venv/bin/python" ]; then
    base_python="$(command -v python3 || command -v python)"
    "$base_python" -m venv "$venv"
fi
site_packages="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
if [ -n "$base_python" ]; then  # the venv is new: decide, once, whose torch it uses
    if "$base_python" -c 'import torch' 2>/dev/null; then
        echo "base image has torch $("$base_python" -c 'import torch; print(torch.__version__)'): keeping it"
        "$base_python" -c 'import site; print("\n".join(site.getsitepackages()))' > "$site_packages/$base_pth"
    else
        echo "base image has no torch: installing the pinned one"
    fi
    echo "python: $("$venv/bin/python" -V 2>&1) (the lock was made for 3.11)"
fi

pip_install() {
    "$venv/bin/python" -m pip install --no-cache-dir --disable-pip-version-check --require-virtualenv "$@"
}

# The lock lines of one group (the lock is the complete, pinned closure: the first two groups need no resolver).
select_group() {
    case "$group" in
        cuda) grep -E '^(nvidia|cuda)-' "$lock" ;;
        torch) grep -E '^(torch|triton)==' "$lock" ;;
        rest) grep -Ev '^(torch|triton)==|^(nvidia|cuda)-' "$lock" ;;
    esac
}

requirements=/tmp/salesfc-requirements.txt
case "$group" in
    cuda | torch)
        if [ -e "$site_packages/$base_pth" ]; then
            echo "$group: the base image's torch serves; nothing to install"
            exit 0
        fi
        select_group > "$requirements"
        pip_install --no-deps --requirement "$requirements"
        ;;
    rest)
        select_group > "$requirements"
        pip_install --requirement "$requirements"
        if [ ! -e "$venv/bin/torchrun" ]; then  # a base's torch brings its torchrun to its own bin, not the venv's
            printf '%s\n' "#!$venv/bin/python" 'import sys' 'from torch.distributed.run import main' \
                'sys.exit(main())' > "$venv/bin/torchrun"
            chmod 0755 "$venv/bin/torchrun"
        fi
        # A base that does not fit fails here, at build time, not in a pod.
        "$venv/bin/python" -c 'import torch, feast; print("torch", torch.__version__, "cuda", torch.version.cuda, "| feast", feast.__version__)'
        ;;
    *)
        echo "install-requirements.sh: unknown group '$group' (expected cuda, torch or rest)" >&2
        exit 2
        ;;
esac
rm -f "$requirements"

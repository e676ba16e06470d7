#!/bin/sh
# Build the phpo image with podman, without any registry (make image):
#   1. a Debian bookworm root by debootstrap (Debian's packages only) in BUILD/rootfs, imported
#      with `podman import` as localhost/phpo-base:bookworm (once; delete it to rebuild);
#   2. wheels of phpo (this working tree) and of its dependencies in BUILD/wheels;
#   3. `podman build` of helm/image/Containerfile on that base -> IMAGE (default phpo:0.1.0).
# Needs root, debootstrap, podman and runc (apt-get install debootstrap podman runc).
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build/image}
IMAGE=${IMAGE:-localhost/phpo:0.1.0}
BASE=${BASE:-localhost/phpo-base:bookworm}
PIP=${PIP:-$ROOT/.venv/bin/pip}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/helm/image/containers.conf}"
mkdir -p "$BUILD"

if ! podman image exists "$BASE"; then
  if [ ! -x "$BUILD/rootfs/usr/bin/python3" ]; then
    echo "debootstrap: Debian bookworm root in $BUILD/rootfs (minutes)"
    rm -rf "$BUILD/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,tini,ca-certificates \
      bookworm "$BUILD/rootfs" "$MIRROR"
  fi
  rm -rf "$BUILD/rootfs/var/cache/apt/archives/"*.deb "$BUILD/rootfs/var/lib/apt/lists/"*
  echo "podman import -> $BASE"
  tar -C "$BUILD/rootfs" -c . | podman import --change 'CMD ["/bin/sh"]' - "$BASE"
fi

echo "wheels of phpo and its dependencies -> $BUILD/deps, $BUILD/phpo"
rm -rf "$BUILD/phpo" "$BUILD"/wheels/phpo-*.whl
"$PIP" wheel -q -w "$BUILD/wheels" "$ROOT[server,agent,mlflow]"
mkdir -p "$BUILD/deps" "$BUILD/phpo"
mv "$BUILD"/wheels/phpo-*.whl "$BUILD/phpo/"
# the dependency layer is rebuilt only when the set of wheels changes
for w in "$BUILD"/wheels/*.whl; do
  cmp -s "$w" "$BUILD/deps/$(basename "$w")" || cp "$w" "$BUILD/deps/"
done
for w in "$BUILD"/deps/*.whl; do
  [ -e "$BUILD/wheels/$(basename "$w")" ] || rm -f "$w"
done
cp "$ROOT/helm/image/entrypoint.sh" "$BUILD/entrypoint.sh"
printf 'rootfs\nwheels\n*.log\n' > "$BUILD/.containerignore"  # the context: deps, phpo, the entry point

echo "podman build -> $IMAGE"
podman build --network none --build-arg "BASE=$BASE" -f "$ROOT/helm/image/Containerfile" -t "$IMAGE" "$BUILD"
podman image ls "$IMAGE"

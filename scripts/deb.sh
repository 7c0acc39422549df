#!/usr/bin/env bash
# Builds target/deb/reconciler_<version>_<arch>.deb with dpkg-deb, Debian's own tool: the
# binary, the systemd unit, an example configuration (a conffile), the man pages and the
# shell completions. `make deb` packages the release build; the test suite packages its own
# build (BINARY=...), which keeps `make test` within its time.
#
#   scripts/deb.sh [OUT_DIR]   BINARY=path/to/reconciler: that binary; COMPRESS=gzip: faster
#                              than xz, the default
set -euo pipefail
cd "$(dirname "$0")/.."

binary=${BINARY:-target/release/reconciler}
out=${1:-target/deb}
[ -x "$binary" ] || { echo "deb: no binary at $binary (cargo build --release --bins)" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/root"

install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/reconciler" \
    "$root/usr/share/man/man1" "$root/usr/share/doc/reconciler" \
    "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d"
install -m 0755 "$binary" "$root/usr/bin/reconciler"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/reconciler"
# The unit of deploy/systemd, with the packaged binary's path.
sed 's|/usr/local/bin/reconciler|/usr/bin/reconciler|' deploy/systemd/reconciler.service \
    > "$root/lib/systemd/system/reconciler.service"
chmod 0644 "$root/lib/systemd/system/reconciler.service"
install -m 0644 deploy/config.example.yaml "$root/etc/reconciler/config.example.yaml"
"$root/usr/bin/reconciler" manpages --dir "$stage/man"
for page in "$stage"/man/*.1; do gzip -9n < "$page" > "$root/usr/share/man/man1/$(basename "$page").gz"; done
"$root/usr/bin/reconciler" completion bash > "$root/usr/share/bash-completion/completions/reconciler"
"$root/usr/bin/reconciler" completion zsh > "$root/usr/share/zsh/vendor-completions/_reconciler"
"$root/usr/bin/reconciler" completion fish > "$root/usr/share/fish/vendor_completions.d/reconciler.fish"
install -m 0644 packaging/debian/copyright "$root/usr/share/doc/reconciler/copyright"
gzip -9n < packaging/debian/changelog > "$root/usr/share/doc/reconciler/changelog.gz"
for script in postinst prerm postrm; do install -m 0755 "packaging/debian/$script" "$root/DEBIAN/$script"; done
echo /etc/reconciler/config.example.yaml > "$root/DEBIAN/conffiles"

# The shared libraries the binary links, as dpkg-shlibdeps finds them.
mkdir -p "$stage/debian"
printf 'Source: reconciler\n\nPackage: reconciler\nArchitecture: any\n' > "$stage/debian/control"
depends=$(cd "$stage" && dpkg-shlibdeps -O -e root/usr/bin/reconciler 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
    -e "s/@SIZE@/$size/" packaging/debian/control > "$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | sort | xargs md5sum) \
    > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/conffiles" "$root/DEBIAN/control"

mkdir -p "$out"
deb="$out/reconciler_${version}_${arch}.deb"
dpkg-deb --root-owner-group "-Z${COMPRESS:-xz}" --build "$root" "$deb" > /dev/null
echo "$deb"

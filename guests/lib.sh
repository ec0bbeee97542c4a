# shellcheck shell=bash disable=SC2154
# (sourced: $repo, $cache, $build_tmp and the helpers come from scripts/build-guests)
# Helpers shared by the guest recipes in guests/*/build.sh. Sourced by
# scripts/build-guests; part of every target's cache key, so a change here
# rebuilds every guest.

# The newest kernel installed from linux-image-amd64.
host_kernel_version() {
  local v
  v=$(find /boot -maxdepth 1 -name 'vmlinuz-*-amd64' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
  [ -n "$v" ] || die "no /boot/vmlinuz-*-amd64: install linux-image-amd64 (scripts/deps does)"
  echo "$v"
}

# Extracts the uncompressed ELF (with its PVH entry note) from a bzImage:
# the compressed payload sits at setup_sects+1 sectors + payload_offset.
extract_vmlinux() {
  local bzimage=$1 out=$2 setup_sects payload_offset payload_length start magic
  setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bzimage" | tr -d ' ')
  ((setup_sects == 0)) && setup_sects=4
  payload_offset=$(od -An -tu4 -j $((0x248)) -N4 "$bzimage" | tr -d ' ')
  payload_length=$(od -An -tu4 -j $((0x24c)) -N4 "$bzimage" | tr -d ' ')
  start=$(((setup_sects + 1) * 512 + payload_offset))
  magic=$(od -An -tx1 -j "$start" -N4 "$bzimage" | tr -d ' \n')
  payload() { dd if="$bzimage" bs=64K iflag=skip_bytes,count_bytes skip="$start" count="$1" status=none; }
  case "$magic" in
    fd377a58) payload "$payload_length" | xz -dc --single-stream >"$out" ;;
    1f8b*) payload "$payload_length" | gzip -dc >"$out" ;;
    # the last 4 bytes are the uncompressed size the kernel build appends
    28b52ffd) payload $((payload_length - 4)) | zstd -dcq >"$out" ;;
    *) die "$bzimage: unknown kernel payload compression (magic $magic); only xz, gzip and zstd are handled" ;;
  esac
  [ "$(od -An -tx1 -N4 "$out" | tr -d ' \n')" = 7f454c46 ] ||
    die "$bzimage: the extracted payload is not an ELF"
}

# Starts a build of $target in a new temporary directory, $build_tmp (removed
# on exit unless published). Not run in a subshell: it registers the cleanup.
begin_build() {
  local target=$1 key=$2
  mkdir -p "$cache"
  build_tmp=$(mktemp -d "$cache/.build-$target-$key.XXXXXX")
  cleanup_dirs+=("$build_tmp")
}

# Writes manifest.json and renames the finished build into place.
publish() {
  local tmp=$1 final=$2 target=$3 key=$4 cmdline=$5
  shift 5
  local files="" f size
  for f in "$@"; do
    size=$(stat -c %s "$tmp/$f")
    files+="${files:+,}"$'\n'"    {\"name\": \"$f\", \"bytes\": $size, \"sha256\": \"$(sha256sum "$tmp/$f" | cut -d' ' -f1)\"}"
  done
  cat >"$tmp/manifest.json" <<JSON
{
  "target": "$target",
  "key": "$key",
  "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "cmdline": "$cmdline",
  "files": [$files
  ]
}
JSON
  chmod 0755 "$tmp"
  sync -f "$tmp/manifest.json"
  mv -T "$tmp" "$final"
}

# On -M microvm with a PVH kernel, QEMU (10.0) loads the initrd so that it
# ends at the top of RAM, in the last page where the firmware put the ACPI
# tables: an initrd whose size is not a multiple of 4096 overwrites them and
# the kernel hangs at "ACPI: Core revision". Padded to whole pages it ends at
# the start of that page. The kernel skips zero padding after an archive.
pad_initrd() {
  local size
  size=$(stat -c %s "$1")
  truncate -s $(((size + 4095) / 4096 * 4096)) "$1"
}

file_is_static() {
  # A static binary has no program interpreter.
  ! readelf -l "$1" 2>/dev/null | grep -q 'interpreter'
}

# Copies the dynamically linked program $1 to $2$3 with the shared libraries
# ldd says it loads (at the same paths, the program interpreter included).
copy_with_libraries() {
  local program=$1 root=$2 dest=$3 lib
  install -D -m 0755 "$program" "$root$dest"
  for lib in $(ldd "$program" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
}

# shellcheck shell=bash disable=SC2154
# (sourced: $repo, $cache, $build_tmp and the helpers come from scripts/build-guests)
# Recipe of the unikernel guest, sourced by scripts/build-guests (which provides
# log, die, ensure_deps, target_key, $repo, $cache and the helpers of
# guests/lib.sh). Part of this target's cache key.

build_unikernel() {
  local key final tmp src=$repo/guests/unikernel
  ensure_deps as ld readelf
  key=$(target_key unikernel "binutils $(dpkg-query -W -f='${Version}' binutils 2>/dev/null)")
  final=$cache/unikernel-$key
  if [ -f "$final/manifest.json" ]; then
    echo "$final"
    return
  fi
  log "unikernel: building $final"
  begin_build unikernel "$key"
  tmp=$build_tmp
  as --32 -o "$tmp/hello.o" "$src/hello.s"
  ld -m elf_i386 -T "$src/link.ld" -o "$tmp/hello-uk" "$tmp/hello.o"
  rm -f "$tmp/hello.o"
  # QEMU boots it only through the PVH note: fail here, not at boot.
  readelf -n "$tmp/hello-uk" | grep -q 'Xen.*0x00000012' ||
    die "hello-uk has no XEN_ELFNOTE_PHYS32_ENTRY note; check guests/unikernel/link.ld"
  publish "$tmp" "$final" unikernel "$key" "exit=0" hello-uk
  log "unikernel: done"
  echo "$final"
}

# shellcheck shell=bash disable=SC2154
# (sourced: $repo, $cache, $build_tmp and the helpers come from scripts/build-guests)
# Recipe of the tiny guest, sourced by scripts/build-guests (which provides
# log, die, ensure_deps, target_key, $repo, $cache and the helpers of
# guests/lib.sh). Part of this target's cache key.

build_tiny() {
  local kver key final tmp root modules_dir m
  kver=$(host_kernel_version)
  ensure_deps busybox cpio xz qemu-ga
  if ! [ -x /bin/busybox ] || ! file_is_static /bin/busybox; then
    die "/bin/busybox is not the static busybox: install busybox-static (scripts/deps does)"
  fi
  key=$(target_key tiny "kernel $kver $(dpkg-query -W -f='${Version}' "linux-image-$kver" 2>/dev/null)" \
    "busybox $(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null)" \
    "qemu-ga $(dpkg-query -W -f='${Version}' qemu-guest-agent 2>/dev/null)")
  final=$cache/tiny-$key
  if [ -f "$final/manifest.json" ]; then
    echo "$final"
    return
  fi
  log "tiny: building $final (kernel $kver)"
  begin_build tiny "$key"
  tmp=$build_tmp
  root=$tmp/initramfs
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,etc/acpi/PWRF,proc,sys,dev,run,tmp,mnt,root,lib/modules,var}

  log "tiny: extracting the vmlinux ELF from /boot/vmlinuz-$kver"
  extract_vmlinux "/boot/vmlinuz-$kver" "$tmp/vmlinux"

  cp /bin/busybox "$root/bin/busybox"
  # One link per applet; /init is busybox init (it reads /etc/inittab).
  local applet
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  for applet in init poweroff reboot halt; do ln -sf ../bin/busybox "$root/sbin/$applet"; done
  ln -sf bin/busybox "$root/init"

  local src=$repo/guests/tiny
  install -m 0644 "$src/inittab" "$root/etc/inittab"
  install -m 0755 "$src/rcS" "$root/etc/init.d/rcS"
  install -m 0755 "$src/rcK" "$root/etc/init.d/rcK"
  install -m 0755 "$src/udhcpc.script" "$root/etc/udhcpc.script"
  install -m 0644 "$src/profile" "$root/etc/profile"
  # busybox acpid runs <confdir>/PWRF/00000080 for the power button.
  install -m 0755 "$src/power-button" "$root/etc/acpi/PWRF/00000080"
  echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
  echo "root:x:0:" >"$root/etc/group"
  echo "nimbus-tiny" >"$root/etc/hostname"
  ln -s ../run "$root/var/run"

  # The QEMU guest agent (freezes filesystems for the host's snapshots),
  # with the shared libraries it links.
  copy_with_libraries "$(command -v qemu-ga)" "$root" /usr/sbin/qemu-ga

  # Drivers Debian builds as modules, with their dependencies, in load order.
  modules_dir=/lib/modules/$kver
  local wanted=(virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
    virtio_blk virtio_net virtio_scsi virtio_console virtio-rng
    fat vfat nls_cp437 nls_ascii nls_utf8 cdrom isofs crc32c_generic ext4
    scsi_common scsi_mod libata ata_piix libahci ahci sd_mod sr_mod
    button evdev)
  local -A seen=()
  local order=()
  add_module() {
    local name=$1 line path dep
    line=$(grep -E "(^|/)${name}\.ko(\.xz|\.zst)?:" "$modules_dir/modules.dep" | head -n 1) || true
    if [ -z "$line" ]; then
      grep -qE "/${name}\.ko" "$modules_dir/modules.builtin" ||
        log "tiny: module $name is neither in modules.dep nor built in; skipped"
      return 0
    fi
    path=${line%%:*}
    [ -n "${seen[$path]:-}" ] && return 0
    seen[$path]=1
    for dep in ${line#*:}; do
      dep=${dep##*/}
      add_module "${dep%%.ko*}"
    done
    order+=("$path")
  }
  for m in "${wanted[@]}"; do add_module "$m"; done
  : >"$root/etc/modules.order"
  for m in "${order[@]}"; do
    mkdir -p "$root/lib/modules/$(dirname "$m")"
    case "$m" in
      *.ko.xz) xz -dc "$modules_dir/$m" >"$root/lib/modules/${m%.xz}" && m=${m%.xz} ;;
      *.ko.zst) zstd -dcq "$modules_dir/$m" >"$root/lib/modules/${m%.zst}" && m=${m%.zst} ;;
      *) cp "$modules_dir/$m" "$root/lib/modules/$m" ;;
    esac
    echo "$m" >>"$root/etc/modules.order"
  done
  log "tiny: ${#order[@]} kernel modules"

  log "tiny: packing tiny-initrd.img"
  (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner 0:0) |
    gzip -9 >"$tmp/tiny-initrd.img"
  pad_initrd "$tmp/tiny-initrd.img"
  rm -rf "$root"
  publish "$tmp" "$final" tiny "$key" "$tcg_cmdline" vmlinux tiny-initrd.img
  log "tiny: done"
  echo "$final"
}

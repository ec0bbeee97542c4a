# shellcheck shell=bash disable=SC2154
# (sourced: $repo, $cache, $build_tmp and the helpers come from scripts/build-guests)
# Recipe of the Debian guest, sourced by scripts/build-guests (which provides
# log, die, ensure_deps, target_key, $repo, $cache and the helpers of
# guests/lib.sh). Part of this target's cache key.

debian_suite=bookworm
debian_mirror=${NIMBUS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
debian_security_mirror=${NIMBUS_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# Fixed so the documented direct-boot command line (root=UUID=...) holds.
debian_root_uuid=6e696d62-7573-4465-8269-616e31320001
debian_disk_gib=3
debian_packages=(systemd-sysv udev dbus linux-image-amd64 initramfs-tools
  cloud-init cloud-guest-utils openssh-server sudo
  ifupdown isc-dhcp-client iproute2 netbase iputils-ping ca-certificates
  grub-pc-bin e2fsprogs procps less)

# Runs a command inside the Debian root being built.
in_root() {
  chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"
}

build_debian() {
  local key final tmp kver
  ensure_deps debootstrap qemu-img mkfs.ext4 sfdisk xz
  key=$(target_key debian "suite $debian_suite" "mirror $debian_mirror" "packages ${debian_packages[*]}")
  final=$cache/debian-$key
  if [ -f "$final/manifest.json" ]; then
    echo "$final"
    return
  fi
  log "debian: building $final (takes minutes: debootstrap, then ~250 packages with apt)"
  local started=$SECONDS
  begin_build debian "$key"
  tmp=$build_tmp
  rootfs=$(mktemp -d /var/tmp/nimbus-debian-root.XXXXXX)
  cleanup_dirs+=("$rootfs")
  # Downloaded .debs survive between builds: a rebuild after a script change
  # fetches only what changed.
  mkdir -p "$cache/.debootstrap-debs"

  # debootstrap lays down only the base system: its own resolver cannot
  # follow virtual packages (python3-cryptography needs one), so everything
  # else is installed with apt inside the new root.
  log "debian: debootstrap $debian_suite (base system) from $debian_mirror into $rootfs"
  mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
  install -m 0644 "$repo/guests/debian/nodoc" "$rootfs/etc/dpkg/dpkg.cfg.d/01-nimbus-nodoc"
  debootstrap --variant=minbase --cache-dir="$cache/.debootstrap-debs" \
    "$debian_suite" "$rootfs" "$debian_mirror" 2>&1 |
    while IFS= read -r line; do
      case "$line" in I:\ Retrieving* | I:\ Validating* | I:\ Extracting* | I:\ Unpacking*) ;; *) log "debian: $line" ;; esac
    done
  [ -x "$rootfs/usr/bin/apt-get" ] || die "debootstrap did not finish (no apt-get in $rootfs); see the messages above"

  for m in proc sys dev; do
    mount --rbind "/$m" "$rootfs/$m"
    mount --make-rslave "$rootfs/$m"
    cleanup_mounts+=("$rootfs/$m")
  done
  # Downloaded packages are kept between builds.
  mkdir -p "$rootfs/var/cache/apt/archives"
  mount --bind "$cache/.debootstrap-debs" "$rootfs/var/cache/apt/archives"
  cleanup_mounts+=("$rootfs/var/cache/apt/archives")
  mkdir -p "$rootfs/var/cache/apt/archives/partial"
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  # No service may start inside the build root.
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
  cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $debian_mirror $debian_suite main
deb $debian_mirror $debian_suite-updates main
deb $debian_security_mirror $debian_suite-security main
SOURCES
  log "debian: apt-get install ${debian_packages[*]}"
  in_root apt-get update -q >/dev/null
  in_root apt-get install -y -q --no-install-recommends "${debian_packages[@]}" 2>&1 |
    while IFS= read -r line; do
      case "$line" in Setting\ up* | E:* | W:* | dpkg:*) log "debian: $line" ;; esac
    done
  [ -x "$rootfs/usr/bin/cloud-init" ] || die "apt did not install cloud-init; see the messages above"
  rm -f "$rootfs/usr/sbin/policy-rc.d"
  : >"$rootfs/etc/resolv.conf"

  log "debian: configuring cloud-init (NoCloud), network, serial console, fstab"
  install -m 0644 "$repo/guests/debian/nimbus.cfg" "$rootfs/etc/cloud/cloud.cfg.d/90-nimbus.cfg"
  install -m 0644 "$repo/guests/debian/interfaces" "$rootfs/etc/network/interfaces"
  mkdir -p "$rootfs/etc/network/interfaces.d"
  echo "UUID=$debian_root_uuid / ext4 errors=remount-ro 0 1" >"$rootfs/etc/fstab"
  echo debian >"$rootfs/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
  # A fresh identity and fresh SSH host keys on every instance's first boot.
  : >"$rootfs/etc/machine-id"
  rm -f "$rootfs"/var/lib/dbus/machine-id "$rootfs"/etc/ssh/ssh_host_*
  # Timers that would download or scrub in the background of a test.
  in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true

  kver=$(find "$rootfs/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
  [ -n "$kver" ] || die "no kernel in the Debian root"
  log "debian: initramfs for kernel $kver"
  install -m 0644 "$repo/guests/debian/initramfs-modules" "$rootfs/etc/initramfs-tools/modules"
  install -m 0644 "$repo/guests/debian/initramfs.conf" "$rootfs/etc/initramfs-tools/conf.d/nimbus.conf"
  in_root update-initramfs -u -k "$kver" >/dev/null
  in_root lsinitramfs "/boot/initrd.img-$kver" >"$tmp/initrd.list"
  grep -q '/virtio_blk\.ko' "$tmp/initrd.list" ||
    die "the Debian initramfs lacks virtio_blk; check guests/debian/initramfs-modules"
  rm -f "$tmp/initrd.list"

  log "debian: GRUB (BIOS) and its configuration"
  local cmdline="console=ttyS0,115200 tsc_early_khz=2000000 net.ifnames=0 root=UUID=$debian_root_uuid ro"
  mkdir -p "$rootfs/boot/grub"
  cp -r "$rootfs/usr/lib/grub/i386-pc" "$rootfs/boot/grub/"
  cat >"$rootfs/boot/grub/grub.cfg" <<GRUB
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
set default=0
menuentry "Debian 12 (Nimbus test guest)" {
  linux /boot/vmlinuz-$kver $cmdline
  initrd /boot/initrd.img-$kver
}
GRUB
  in_root grub-mkimage -O i386-pc -o /tmp/core.img -p "(hd0,msdos1)/boot/grub" \
    biosdisk part_msdos ext2 normal linux serial terminal configfile echo test
  cp "$rootfs/tmp/core.img" "$tmp/core.img"
  cp "$rootfs/usr/lib/grub/i386-pc/boot.img" "$tmp/boot.img"

  log "debian: copying the kernel (vmlinux ELF) and initrd out"
  extract_vmlinux "$rootfs/boot/vmlinuz-$kver" "$tmp/debian-vmlinux"
  cp "$rootfs/boot/initrd.img-$kver" "$tmp/debian-initrd.img"
  pad_initrd "$tmp/debian-initrd.img"

  for ((i = ${#cleanup_mounts[@]} - 1; i >= 0; i--)); do umount -R "${cleanup_mounts[i]}"; done
  cleanup_mounts=()
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/archives/partial
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/tmp/* "$rootfs"/var/log/*.log \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/info/*
  find "$rootfs/var/log" -type f -delete

  # Disk: MBR, one bootable ext4 partition from 1 MiB, GRUB's boot sector in
  # the MBR and its core image in the gap before the partition. No loop device
  # is needed: the filesystem is made from the directory (mke2fs -d).
  log "debian: ext4 filesystem from the root ($(du -shx "$rootfs" | cut -f1))"
  local part_bytes=$(((debian_disk_gib * 1024 - 1) * 1024 * 1024))
  truncate -s "$part_bytes" "$tmp/root.ext4"
  mkfs.ext4 -q -L debian-root -U "$debian_root_uuid" -d "$rootfs" "$tmp/root.ext4"
  truncate -s "${debian_disk_gib}G" "$tmp/disk.raw"
  echo 'label: dos
start=2048, type=83, bootable' | sfdisk -q "$tmp/disk.raw"
  dd if="$tmp/root.ext4" of="$tmp/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
  rm -f "$tmp/root.ext4"
  local core_sectors=$((($(stat -c %s "$tmp/core.img") + 511) / 512))
  ((core_sectors < 2047)) || die "GRUB core image is $core_sectors sectors: does not fit before the partition"
  # Boot code only (440 bytes): the partition table and disk id stay.
  dd if="$tmp/boot.img" of="$tmp/disk.raw" bs=440 count=1 conv=notrunc status=none
  dd if="$tmp/core.img" of="$tmp/disk.raw" bs=512 seek=1 conv=notrunc status=none
  rm -f "$tmp/core.img" "$tmp/boot.img"

  log "debian: compressing to debian-12.qcow2"
  qemu-img convert -c -O qcow2 "$tmp/disk.raw" "$tmp/debian-12.qcow2"
  rm -f "$tmp/disk.raw"
  publish "$tmp" "$final" debian "$key" \
    "console=ttyS0 tsc_early_khz=2000000 net.ifnames=0 root=UUID=$debian_root_uuid ro" \
    debian-12.qcow2 debian-vmlinux debian-initrd.img
  log "debian: done in $((SECONDS - started)) s"
  echo "$final"
}

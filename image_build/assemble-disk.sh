#!/usr/bin/env bash
# Assemble disk.img from rootfs.ext4 and the unpacked root (for GRUB and the kernel):
# GPT with fixed GUIDs (reproducible), 1 EFI (FAT, GRUB standalone + grub.cfg + grubenv),
# 2/3 rootfs A/B (the same ext4 image, typed as the architecture's root partition), 4 data
# (ext4, linux-generic, empty; the box grows it to the disk's end on first boot:
# edgebox-grow-data.service). User-space tools only: mtools writes the FAT (no vfat
# needed in the kernel).
#
# Usage: assemble-disk.sh ROOTFS_EXT4 ROOT_DIR DISK_IMG
# Environment (build.py sets them per architecture; amd64 when unset): ROOT_TYPE (the GPT
# type GUID of root A/B), GRUB_FORMAT (x86_64-efi), EFI_NAME (BOOTX64.EFI).
set -euo pipefail
rootfs=$1 root=$2 disk=$3
epoch=${SOURCE_DATE_EPOCH:?}
root_type=${ROOT_TYPE:-4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709}
grub_format=${GRUB_FORMAT:-x86_64-efi}
efi_name=${EFI_NAME:-BOOTX64.EFI}
mib() { echo $(( ($(stat -c %s "$1") + 1048575) / 1048576 )); }
efi_mib=64 root_mib=$(( $(mib "$rootfs") + 64 )) data_mib=256
total=$(( 1 + efi_mib + 2 * root_mib + data_mib + 1 ))
rm -f "$disk"
truncate -s "${total}M" "$disk"
sfdisk --quiet "$disk" <<GPT
label: gpt
label-id: 5E1F0B0C-0000-4000-8000-000000000000
size=${efi_mib}M, type=U, name=edgebox-efi, uuid=5E1F0B0C-0000-4000-8000-000000000001
size=${root_mib}M, type=${root_type}, name=edgebox-root-a, uuid=5E1F0B0C-0000-4000-8000-000000000002
size=${root_mib}M, type=${root_type}, name=edgebox-root-b, uuid=5E1F0B0C-0000-4000-8000-000000000003
size=${data_mib}M, type=L, name=edgebox-data, uuid=5E1F0B0C-0000-4000-8000-000000000004
GPT
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# EFI: GRUB built standalone with our grub.cfg as its prefix config.
grub-mkstandalone --format="$grub_format" --directory="$root/usr/lib/grub/$grub_format" \
    --output="$work/$efi_name" \
    --modules="part_gpt ext2 fat loadenv test linux echo" \
    "boot/grub/grub.cfg=$root/usr/share/edgebox/grub.cfg"
grub-editenv "$work/grubenv" create
grub-editenv "$work/grubenv" set ORDER="A B" A_OK=1 A_TRY=0 B_OK=0 B_TRY=0
mkfs.vfat -n EDGEBOX-EFI -i 5E1F0B0C -C "$work/efi.img" $(( efi_mib * 1024 )) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$work/efi.img" ::/EFI ::/EFI/BOOT ::/EFI/edgebox
mcopy -i "$work/efi.img" -m "$work/$efi_name" "::/EFI/BOOT/$efi_name"
mcopy -i "$work/efi.img" -m "$work/grubenv" ::/EFI/edgebox/grubenv
# Partition offsets from sfdisk, in 512-byte sectors.
mapfile -t starts < <(sfdisk --dump "$disk" | sed -n 's/.*start= *\([0-9]*\),.*/\1/p')
dd if="$work/efi.img" of="$disk" bs=512 seek="${starts[0]}" conv=notrunc,sparse status=none
dd if="$rootfs" of="$disk" bs=512 seek="${starts[1]}" conv=notrunc,sparse status=none
dd if="$rootfs" of="$disk" bs=512 seek="${starts[2]}" conv=notrunc,sparse status=none
E2FSPROGS_FAKE_TIME=$epoch mkfs.ext4 -q -F -L edgebox-data \
    -U 5e1f0b0c-0000-4000-8000-00000000da7a "$work/data.img" "${data_mib}M"
dd if="$work/data.img" of="$disk" bs=512 seek="${starts[3]}" conv=notrunc,sparse status=none
echo "disk image $disk: ${total} MiB"

# usb-x86: the bootable USB stick (UEFI): a root console on tty1 with bty and bty-tui, and the
# exFAT BTY_IMAGES partition for images (nixos-modules/bty-usb.nix).
#   nix build .#usb-x86 && bty flash result/bty-usb-x86.img.zst /dev/sdX --yes
{
  config,
  pkgs,
  ...
}:

let
  repartImage = config.system.build.image;
  raw = "${repartImage}/${config.image.repart.imageFileBasename}.raw";
in
{
  imports = [ ./efi-disk.nix ];

  bty.imageName = "bty-usb-x86";
  image.repart.partitions."30-images".repartConfig = {
    # "Microsoft basic data": the type Windows and macOS look for to mount a data partition.
    Type = "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7";
    Label = "BTY_IMAGES";
    SizeMinBytes = "2G";
    SizeMaxBytes = "2G";
  };

  services.bty-usb.enable = true;
  networking.hostName = "bty-usb";
  # Machines the stick boots on may have any network; DHCP on all of them, for http(s) sources.
  networking.useDHCP = true;

  system.stateVersion = "26.05";

  # systemd-repart cannot make exFAT, so the partition is left empty by it and formatted here:
  # an exFAT file system the partition's size, written at the partition's offset (both from
  # repart's own JSON report). Then the stick is compressed as bty flash likes it.
  system.build.btyImage =
    pkgs.runCommand "bty-usb-x86"
      {
        nativeBuildInputs = with pkgs; [
          exfatprogs
          jq
          zstd
        ];
      }
      ''
        cp --sparse=always ${raw} disk.img
        chmod u+w disk.img
        read -r offset size < <(jq -r '.[] | select(.label == "BTY_IMAGES") | "\(.offset) \(.raw_size)"' \
          ${repartImage}/repart-output.json)
        truncate -s "$size" images.fs
        mkfs.exfat -L BTY_IMAGES images.fs
        dd if=images.fs of=disk.img bs=1M seek="$offset" oflag=seek_bytes conv=notrunc,sparse status=none
        mkdir $out
        zstd -T0 -q disk.img -o $out/bty-usb-x86.img.zst
        (cd $out && sha256sum bty-usb-x86.img.zst > bty-usb-x86.img.zst.sha256)
      '';
}

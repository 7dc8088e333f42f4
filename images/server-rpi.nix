# server-rpi: the provisioning appliance as an SD card image for 64-bit Raspberry Pis, from
# nixpkgs' generic aarch64 SD image (U-Boot + extlinux, the Pi firmware on the FAT partition;
# the root partition grows to the card on first boot).
#   nix build .#server-rpi && bty flash result/sd-image/*.img.zst /dev/mmcblk0 --yes
# The live environment it serves is x86_64 (the PXE clients are PCs): building this on an
# aarch64 machine needs an x86_64 builder or substituter for that part, and the other way round.
#
# No A/B slots here (services.bty-appliance.os stays off): the Pi boots through its own firmware,
# then U-Boot and extlinux, with no UEFI, no systemd-boot and so no boot counting, no
# LoaderEntrySelected to find the slot from, and nothing that would fall back from a slot that
# does not come up. The card keeps nixpkgs' single-root layout and is updated by flashing a new
# image. The Pi's own candidate is its firmware's `tryboot` (a one-time boot of another partition
# set, made permanent by the booted system), which would replace systemd-boot's part of the scheme;
# it is not wired up.
{
  config,
  modulesPath,
  btyFlake,
  ...
}:

{
  imports = [ "${modulesPath}/installer/sd-card/sd-image-aarch64.nix" ];

  services.bty-appliance.enable = true;
  services.bty-web.liveEnvironment = btyFlake.packages.x86_64-linux.live-x86;

  system.stateVersion = "26.05";
  system.build.btyImage = config.system.build.sdImage;
}

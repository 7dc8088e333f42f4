# server-x86: the provisioning appliance for any amd64 box (or VM) that boots UEFI.
#   nix build .#server-x86 && bty flash result/bty-server-x86.raw.zst /dev/sdX --yes
{
  config,
  btyFlake,
  ...
}:

{
  imports = [ ./efi-disk.nix ];

  bty.imageName = "bty-server-x86";
  image.repart.compression.enable = true; # .raw.zst, which bty flash streams as it is

  services.bty-appliance.enable = true;
  # What PXE clients boot: served from the Nix store, linked into bty-web's boot directory.
  services.bty-web.liveEnvironment = btyFlake.packages.x86_64-linux.live-x86;

  system.stateVersion = "26.05";
  system.build.btyImage = config.system.build.image;
}

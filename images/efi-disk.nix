# A GPT disk image that boots on UEFI: an EFI system partition with systemd-boot and the
# system as a unified kernel image, and an ext4 root holding the Nix store. Built with
# systemd-repart (nixpkgs' image/repart.nix), so the image needs no root or loop devices to
# build. On first boot the initrd grows the root partition to the end of the disk the image was
# written to (systemd-repart in the initrd), so one image fits any disk size.
{
  config,
  lib,
  pkgs,
  modulesPath,
  ...
}:

let
  efiArch = pkgs.stdenv.hostPlatform.efiArch;
in
{
  imports = [ "${modulesPath}/image/repart.nix" ];

  options.bty.imageName = lib.mkOption {
    type = lib.types.str;
    description = "Base name of the image file (e.g. bty-server-x86).";
  };

  config = {
    image.repart = {
      name = config.bty.imageName;
      partitions = {
        "10-esp" = {
          contents = {
            "/EFI/BOOT/BOOT${lib.toUpper efiArch}.EFI".source =
              "${pkgs.systemd}/lib/systemd/boot/efi/systemd-boot${efiArch}.efi";
            # systemd-boot finds unified kernel images in /EFI/Linux by itself: no entries.
            "/EFI/Linux/${config.system.boot.loader.ukiFile}".source =
              "${config.system.build.uki}/${config.system.boot.loader.ukiFile}";
          };
          repartConfig = {
            Type = "esp";
            Format = "vfat";
            Label = "ESP";
            SizeMinBytes = "256M";
          };
        };
        "20-root" = {
          storePaths = [ config.system.build.toplevel ];
          repartConfig = {
            Type = "root";
            Format = "ext4";
            Label = "nixos";
            Minimize = "guess";
          };
        };
      };
    };

    boot.loader.grub.enable = false;
    boot.initrd.systemd.enable = true;
    boot.initrd.systemd.repart.enable = true;
    # Only grow: the definition matches the root partition already there.
    systemd.repart.partitions."20-root".Type = "root";

    fileSystems."/" = {
      device = "/dev/disk/by-label/nixos";
      fsType = "ext4";
    };
    fileSystems."/boot" = {
      device = "/dev/disk/by-label/ESP";
      fsType = "vfat";
      options = [ "umask=0077" ];
    };

    # A monitor or a serial console, whichever the machine has; the console banner says where
    # the web UI is.
    boot.kernelParams = [
      "console=tty0"
      "console=ttyS0,115200"
    ];
    hardware.enableAllHardware = true;
  };
}

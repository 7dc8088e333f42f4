# Stands for the file nixos-generate-config writes on the real machine.
{
  boot.loader.grub.device = "/dev/sda";
  boot.initrd.availableKernelModules = [
    "ahci"
    "nvme"
    "virtio_pci"
    "virtio_blk"
  ];
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
}

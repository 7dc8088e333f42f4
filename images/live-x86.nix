# live-x86: the environment PXE clients boot into: kernel + initrd (nixpkgs' netboot module:
# the initrd carries the whole system as a squashfs, so one HTTP fetch by iPXE is the whole
# boot) with bty-flash-on-boot.service and bty-tui-on-tty1.service (nixos-modules/bty-live.nix).
#
# The package output is what bty-web serves from its boot directory:
#   vmlinuz, initrd, cmdline (the parameters bty-web must append), nix-store.squashfs (the same
#   squashfs, separately, for inspection), and passthru.kernelParams for services.bty-web.
{
  config,
  lib,
  pkgs,
  modulesPath,
  ...
}:

let
  kernelParams = [ "init=${config.system.build.toplevel}/init" ] ++ config.boot.kernelParams;
in
{
  imports = [
    "${modulesPath}/installer/netboot/netboot.nix"
    "${modulesPath}/profiles/minimal.nix"
  ];

  # Real machines: every disk controller and NIC driver the kernel has, in the initrd.
  hardware.enableAllHardware = true;

  services.bty-live.enable = true;
  networking.hostName = "bty-live";
  # bty-web adds console=tty0 console=ttyS0,115200 itself, serial last; none here, so the
  # serial console stays /dev/console.

  # When the agent fails it leaves the reason on the console and the machine waiting there;
  # the operator at that console gets a root shell (there is nothing on this RAM-backed
  # system to protect, and the machine's disk is what they came to fix).
  services.getty.autologinUser = "root";

  system.stateVersion = "26.05";

  system.build.btyImage =
    pkgs.runCommand "bty-live-x86"
      {
        passthru = { inherit kernelParams; };
      }
      ''
        mkdir $out
        ln -s ${config.system.build.kernel}/${config.system.boot.loader.kernelFile} $out/vmlinuz
        ln -s ${config.system.build.netbootRamdisk}/initrd $out/initrd
        ln -s ${config.system.build.squashfsStore} $out/nix-store.squashfs
        echo ${lib.escapeShellArg (toString kernelParams)} > $out/cmdline
      '';
}

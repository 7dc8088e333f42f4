# The USB stick: boot any machine into a console where `bty` and `bty-tui` are ready, with the
# images to flash on the stick's own exFAT partition, labelled BTY_IMAGES (exFAT so that
# Windows and macOS can copy images onto the stick too).
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.bty-usb;
in
{
  imports = [ ./bty-program.nix ];

  options.services.bty-usb = {
    enable = lib.mkEnableOption "the bty USB stick environment (root console on tty1, BTY_IMAGES mounted)";
    imagesDir = lib.mkOption {
      type = lib.types.str;
      default = "/var/lib/bty/images";
      description = "Where the BTY_IMAGES partition is mounted.";
    };
  };

  config = lib.mkIf cfg.enable {
    programs.bty.enable = true;

    # Root on tty1 only: the person at the machine's keyboard is the operator (they booted
    # the stick); the serial console and other VTs still ask for a password.
    systemd.services."getty@tty1" = {
      overrideStrategy = "asDropin";
      serviceConfig.ExecStart = [
        ""
        "@${pkgs.util-linux}/sbin/agetty agetty --login-program ${config.services.getty.loginProgram} --autologin root --noclear --keep-baud %I 115200,38400,9600 $TERM"
      ];
    };

    boot.supportedFilesystems.exfat = true;

    # nofail: a stick whose BTY_IMAGES partition was removed or reformatted still boots.
    fileSystems.${cfg.imagesDir} = {
      device = "/dev/disk/by-label/BTY_IMAGES";
      fsType = "exfat";
      options = [
        "nofail"
        "x-systemd.device-timeout=10s"
        "noatime"
        "uid=0"
        "gid=0"
        "fmask=0022"
        "dmask=0022"
      ];
    };

    users.motd = ''
      bty USB stick: images on BTY_IMAGES are in ${cfg.imagesDir}
        bty disks                                    list disks
        bty flash ${cfg.imagesDir}/IMAGE /dev/sdX    flash (add --yes to write)
        bty-tui                                      the same, interactively
    '';
  };
}

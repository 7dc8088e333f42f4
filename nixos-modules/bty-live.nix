# The network-booted live environment's two entry points. bty-web puts
# `bty.server=URL bty.mac=MAC bty.token=TOKEN` on the kernel command line (the token is the
# offer's: reports without it are refused), plus `bty.mode=interactive` when the
# machine's policy is `tui`; exactly one of these units runs, chosen by that word.
#
#   bty-flash-on-boot.service  `bty agent`: inventory, plan, flash/verify, report, the offline
#                              CIJOE workflow of a cijoe-offline machine (cijoe on its PATH), reboot
#   bty-tui-on-tty1.service    `bty-tui` on tty1 in place of the login prompt
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.bty-live;

  # bty-tui takes --server/--mac and the offer token; the kernel command line is where bty-web
  # put them. The token goes through the environment, not the argument list other processes see.
  tuiStart = pkgs.writeShellScript "bty-tui-on-tty1" ''
    set -u
    server="" mac="" token=""
    for word in $(cat /proc/cmdline); do
      case "$word" in
        bty.server=*) server="''${word#*=}" ;;
        bty.mac=*) mac="''${word#*=}" ;;
        bty.token=*) token="''${word#*=}" ;;
      esac
    done
    BTY_OFFER_TOKEN="$token" exec ${lib.getExe' cfg.package "bty-tui"} --server "$server" --mac "$mac"
  '';
in
{
  imports = [ ./bty-program.nix ];

  options.services.bty-live = {
    enable = lib.mkEnableOption "the bty live environment's flash-on-boot and TUI units";
    package = lib.mkOption {
      type = lib.types.package;
      default = config.programs.bty.package;
      defaultText = lib.literalExpression "config.programs.bty.package";
      description = "The bty package providing `bty` (the agent) and `bty-tui`.";
    };
    cijoe = {
      enable = lib.mkEnableOption "cijoe in the live environment, for `cijoe-offline` workflows after a flash" // {
        default = true;
      };
      package = lib.mkOption {
        type = lib.types.package;
        default = pkgs.callPackage ../nix/cijoe.nix { };
        defaultText = lib.literalExpression "pkgs.callPackage \"\${bty}/nix/cijoe.nix\" { }";
        description = "The cijoe the agent runs offline workflows with (`bty provision`).";
      };
    };
  };

  config = lib.mkIf cfg.enable {
    # `bty flash` from the console is the way out when the agent fails; the agent says so.
    environment.systemPackages = [ cfg.package ] ++ lib.optional cfg.cijoe.enable cfg.cijoe.package;

    systemd.services.bty-flash-on-boot = {
      description = "bty: flash this machine as its provisioning server says";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # Several conditions must all hold: a server and MAC to ask, and not the TUI path.
      unitConfig.ConditionKernelCommandLine = [
        "bty.server"
        "bty.mac"
        "!bty.mode=interactive"
      ];
      # A failed agent must not reboot: the machine would PXE-boot into the same failure in a
      # loop. It stays at the console with the reason printed, and the server has it too.
      # A successful agent reboots (or powers off with bty.poweroff=1) by itself, after
      # syncing: its `bty: ...; rebooting` marker is the last thing on the serial console, and
      # nothing in this RAM-backed system needs an orderly shutdown.
      # `bty provision` (run by the agent after a cijoe-offline flash) finds cijoe on PATH.
      path = lib.optional cfg.cijoe.enable cfg.cijoe.package;
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${lib.getExe' cfg.package "bty"} agent";
        StandardOutput = "journal+console";
        StandardError = "journal+console";
        # A flash of a large image takes as long as it takes.
        TimeoutStartSec = "infinity";
      };
    };

    # The same shape as nixpkgs' display managers on a VT (greetd): after the getty so it
    # replaces it, conflicting with it so the getty is stopped, never respawned on tty1.
    systemd.services.bty-tui-on-tty1 = {
      description = "bty: the interactive flasher on tty1";
      wantedBy = [ "multi-user.target" ];
      wants = [
        "network-online.target"
        "systemd-user-sessions.service"
      ];
      after = [
        "network-online.target"
        "systemd-user-sessions.service"
        "getty@tty1.service"
      ];
      conflicts = [ "getty@tty1.service" ];
      unitConfig.ConditionKernelCommandLine = [
        "bty.server"
        "bty.mac"
        "bty.mode=interactive"
      ];
      restartIfChanged = false;
      serviceConfig = {
        Type = "idle";
        ExecStart = tuiStart;
        StandardInput = "tty";
        StandardOutput = "tty";
        StandardError = "journal";
        TTYPath = "/dev/tty1";
        TTYReset = true;
        TTYVHangup = true;
        TTYVTDisallocate = true;
        UtmpIdentifier = "tty1";
        # Quitting the TUI brings it back, as a getty would; other VTs have shells.
        Restart = "always";
        RestartSec = 1;
      };
    };
  };
}

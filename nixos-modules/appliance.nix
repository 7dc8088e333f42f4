# The provisioning appliance (server-x86, server-rpi): what happens between `dd` and a working
# server, PRODUCT §7. Boot with a network cable in; DHCP brings the network up; bty-web serves
# on :8080 (web login bty / bty); the console and SSH banner say where and what to change;
# users `bty` (operator) and `odus` (admin, passwordless sudo) log in with the initial
# password once and must choose a new one there and then.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.bty-appliance;
  port = config.services.bty-web.settings.server.port;
  banner = ''

    bty provisioning appliance (${config.networking.hostName})
      web UI:   http://\4:${toString port}/   or   http://${config.networking.hostName}.local:${toString port}/
      web login bty / bty until you change it (Settings); console and SSH: users bty and odus.
      First login as bty or odus asks for a new password. odus has sudo.

  '';
in
{
  imports = [
    ./bty-program.nix
    ./bty-web.nix
    # The A/B side (services.bty-appliance.os), for the disk images/server-x86.nix builds.
    ./bty-os.nix
  ];

  options.services.bty-appliance = {
    enable = lib.mkEnableOption "the bty provisioning appliance (users, SSH, bty-web with TFTP, first-boot experience)";
    initialPassword = lib.mkOption {
      type = lib.types.str;
      default = "bty";
      description = ''
        Initial login password of `bty` and `odus`. It is expired on first boot, so the
        first login sets a new one. Public by design (it is on the box): change it at once.
      '';
    };
    adminAuthorizedKeys = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      description = "SSH public keys of `odus`, for appliances built with the admin's key in them.";
    };
  };

  config = lib.mkIf cfg.enable {
    networking.hostName = lib.mkDefault "bty";
    # The first boot has no configuration beyond "plug it in": every interface asks DHCP.
    networking.useDHCP = lib.mkDefault true;

    programs.bty.enable = true;

    services.bty-web = {
      enable = true;
      openFirewall = true;
      tftp.enable = lib.mkDefault true;
      # The operator copies images into the state directory's images/ over SSH.
      imagesGroupWritable = true;
    };

    users.mutableUsers = true;
    users.users.bty = {
      isNormalUser = true;
      description = "bty operator";
      inherit (cfg) initialPassword;
      extraGroups = [ config.services.bty-web.group ];
    };
    users.users.odus = {
      isNormalUser = true;
      description = "bty appliance administrator";
      inherit (cfg) initialPassword;
      extraGroups = [
        "wheel"
        config.services.bty-web.group
      ];
      openssh.authorizedKeys.keys = cfg.adminAuthorizedKeys;
    };
    security.sudo.extraRules = [
      {
        users = [ "odus" ];
        commands = [
          {
            command = "ALL";
            options = [ "NOPASSWD" ];
          }
        ];
      }
    ];

    services.openssh = {
      enable = true;
      settings = {
        PermitRootLogin = "no";
        # Passwords are how the first login happens; add keys, then turn this off.
        PasswordAuthentication = lib.mkDefault true;
        KbdInteractiveAuthentication = lib.mkDefault true;
      };
    };

    # bty.local on the LAN, so the banner's second URL works without knowing the address.
    services.avahi = {
      enable = true;
      nssmdns4 = true;
      openFirewall = true;
      publish = {
        enable = true;
        addresses = true;
      };
    };

    # agetty expands \4 to the machine's IPv4 address when it prints the login prompt.
    services.getty.helpLine = lib.mkForce banner;
    users.motd = banner;

    # The initial password is public: expire it once, on the first boot, so the first login
    # (console or SSH) must replace it. Later rebuilds keep /etc/shadow as it is.
    systemd.services.bty-appliance-first-boot = {
      description = "bty appliance: expire the initial passwords";
      wantedBy = [ "multi-user.target" ];
      before = [
        "sshd.service"
        "getty.target"
      ];
      unitConfig.ConditionPathExists = "!/var/lib/bty-appliance/first-boot-done";
      serviceConfig = {
        Type = "oneshot";
        StateDirectory = "bty-appliance";
      };
      script = ''
        ${pkgs.shadow}/bin/passwd --expire bty
        ${pkgs.shadow}/bin/passwd --expire odus
        touch /var/lib/bty-appliance/first-boot-done
      '';
    };

    environment.systemPackages = with pkgs; [
      sqlite
      zstd
    ];
  };
}

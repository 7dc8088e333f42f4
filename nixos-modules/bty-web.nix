# services.bty-web: the provisioning server on an existing NixOS host or an appliance.
#
# bty-web reads one bty.toml (`--config`); `settings` is rendered to it with pkgs.formats.toml,
# in the nixpkgs settings style (RFC 42): any key bty-web knows can be set, the ones this module
# relies on are declared. The admin password never goes through the Nix store: it comes from
# `adminPasswordFile` as a systemd credential, else from a `bty-web.admin-password` credential in
# the system's credential store (how the appliance passes on the one its bty-secrets partition
# holds), else from state.db.
#
# TFTP and ProxyDHCP are bty-web's own (PRODUCT §6): TFTP hands PXE firmware an iPXE binary
# (copied into the boot directory at each start) whose embedded script chains to bty-web's
# /pxe-bootstrap.ipxe; ProxyDHCP adds the PXE boot offer to the LAN's DHCP without assigning
# addresses, so the LAN's own DHCP server stays as it is. The unit gets CAP_NET_BIND_SERVICE,
# and nothing more, when a service (or the HTTP port) needs a port below 1024. The Settings page
# can still switch either service at runtime; these options set the default.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.bty-web;
  settingsFormat = pkgs.formats.toml { };

  # TOML has no null: unset optional keys are left out, and bty-web applies its own default.
  configFile = settingsFormat.generate "bty.toml" (
    lib.filterAttrsRecursive (_: v: v != null) cfg.settings
  );

  bootDir = if cfg.settings.paths.boot_dir != null then cfg.settings.paths.boot_dir else "${cfg.stateDir}/boot";

  port = cfg.settings.server.port;

  # Ports below 1024: HTTP on one, TFTP (69), ProxyDHCP (67, 4011).
  lowPorts = port < 1024 || cfg.tftp.enable || cfg.proxyDhcp.enable;

  # The script the iPXE binaries served over TFTP run: get an address, then hand over to
  # bty-web, which answers per MAC. Without a public_url the TFTP server's own address
  # (next-server) is used: TFTP and bty-web run on the same host.
  bootstrapUrl =
    if cfg.settings.server.public_url != null then
      "${lib.removeSuffix "/" cfg.settings.server.public_url}/pxe-bootstrap.ipxe"
    else
      "http://\${next-server}:${toString port}/pxe-bootstrap.ipxe";

  ipxe = cfg.tftp.ipxePackage.override {
    # The user class marks requests from this binary, so ProxyDHCP offers it only to
    # firmware (and to other iPXE builds, such as QEMU's NIC ROMs), never to itself again.
    embedScript = pkgs.writeText "bty-chain.ipxe" ''
      #!ipxe
      set user-class bty
      dhcp || goto retry
      chain ${bootstrapUrl} || goto retry
      :retry
      echo bty: cannot reach ${bootstrapUrl}; retrying in 10 s
      sleep 10
      dhcp
      chain ${bootstrapUrl}
    '';
  };


  # Reads the admin password from a systemd credential, when there is one, into the
  # BTY_ADMIN_PASSWORD override bty-web already knows; the value never appears on a command
  # line or in the unit. adminPasswordFile (admin-password) is the host's explicit choice and
  # wins over the credential store's (bty-web.admin-password).
  start = pkgs.writeShellScript "bty-web-start" ''
    set -eu
    for cred in admin-password bty-web.admin-password; do
      if [ -n "''${CREDENTIALS_DIRECTORY:-}" ] && [ -r "$CREDENTIALS_DIRECTORY/$cred" ]; then
        BTY_ADMIN_PASSWORD="$(cat "$CREDENTIALS_DIRECTORY/$cred")"
        export BTY_ADMIN_PASSWORD
        break
      fi
    done
    exec ${lib.getExe' cfg.package "bty-web"} --config ${configFile} serve
  '';

  live = cfg.liveEnvironment;

  # A key file given as a Nix path is copied into the store (a public key may be there).
  osSettings = lib.filterAttrs (_: v: v != null) {
    inherit (cfg.os) esp source;
    pubkey = if cfg.os.pubkey == null then null else "${cfg.os.pubkey}";
  };
in
{
  imports = [
    ./bty-program.nix
    (lib.mkRemovedOptionModule [ "services" "bty-web" "proxyDhcp" "subnet" ] ''
      bty-web's own ProxyDHCP answers on an interface, not a subnet: set
      services.bty-web.proxyDhcp.interface.'')
    (lib.mkRemovedOptionModule [ "services" "bty-web" "proxyDhcp" "interfaces" ] ''
      bty-web's own ProxyDHCP answers on one interface: set services.bty-web.proxyDhcp.interface.'')
  ];

  options.services.bty-web = {
    enable = lib.mkEnableOption "bty-web, the bty provisioning server (HTTP API, iPXE, machine registry)";

    package = lib.mkOption {
      type = lib.types.package;
      default = config.programs.bty.package;
      defaultText = lib.literalExpression "config.programs.bty.package";
      description = "The bty package whose `bty-web` binary is run.";
    };

    stateDir = lib.mkOption {
      type = lib.types.strMatching "/var/lib/[^/].*";
      default = "/var/lib/bty";
      description = ''
        bty-web's state directory (`paths.state_dir`): state.db, boot/, images/, catalog.toml,
        backups/. It must be under /var/lib: systemd creates it (StateDirectory=) owned by
        the service's user.
      '';
    };

    user = lib.mkOption {
      type = lib.types.str;
      default = "bty-web";
      description = "User bty-web runs as; created when left at the default.";
    };

    group = lib.mkOption {
      type = lib.types.str;
      default = "bty-web";
      description = ''
        Group of the state directory. Members (e.g. the appliance's operator) can read it;
        with `imagesGroupWritable` they can also add images.
      '';
    };

    imagesGroupWritable = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Let members of `group` write to the images directory (`<stateDir>/images`).";
    };

    adminPasswordFile = lib.mkOption {
      type = lib.types.nullOr lib.types.externalPath;
      default = null;
      example = "/run/secrets/bty-admin-password";
      description = ''
        File holding the operator password (`admin.password`), read at each start through
        a systemd credential; it replaces the stored password. Outside the Nix store, which
        is world-readable. When null, a credential named `bty-web.admin-password` in the
        system's credential store (`/etc/credstore`, `/run/credstore`, or one passed to the
        machine) is used the same way when there is one; else the password stored in state.db
        is kept (on first start: bty-web's default, `bty`).
      '';
    };

    os = {
      esp = lib.mkOption {
        type = lib.types.nullOr (lib.types.strMatching "/.*");
        default = null;
        example = "/boot";
        description = ''
          Where this machine's EFI system partition is mounted (`settings.os.esp`), on an
          appliance with A/B slots: bty-web reads the slots' boot entries there.
        '';
      };
      source = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "https://releases.example/bty";
        description = ''
          Where the appliance's releases are (`settings.os.source`): an http(s) base, a `file:`
          URL or a directory with `latest` and `VERSION/manifest.json`, as `bty os --source`.
        '';
      };
      pubkey = lib.mkOption {
        type = lib.types.nullOr lib.types.path;
        default = null;
        example = lib.literalExpression "./minisign.pub";
        description = ''
          The release public key, a `minisign.pub` file (`settings.os.pubkey`), instead of the
          one built into bty. A public key may be in the Nix store.
        '';
      };
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the HTTP port, and the TFTP and ProxyDHCP ports when those are enabled.";
    };

    tftp = {
      enable = lib.mkEnableOption ''
        bty-web's TFTP server (UDP 69), handing PXE firmware an iPXE binary chained to bty-web
        (sets `settings.tftp.enabled`)'';
      ipxePackage = lib.mkPackageOption pkgs "ipxe" { };
    };

    proxyDhcp = {
      enable = lib.mkEnableOption ''
        bty-web's ProxyDHCP (UDP 67 and 4011): PXE boot offers alongside the LAN's own DHCP
        server, which keeps assigning addresses. Implies `tftp.enable` (sets
        `settings.proxy_dhcp.enabled`)'';
      interface = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "eth0";
        description = "The interface to answer PXE clients on (`settings.proxy_dhcp.interface`).";
      };
      advertiseAddress = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "192.168.1.2";
        description = ''
          The address PXE clients are told to fetch from (default: the interface's first IPv4
          address).
        '';
      };
    };

    cijoe.package = lib.mkOption {
      type = lib.types.nullOr lib.types.package;
      default = pkgs.callPackage ../nix/cijoe.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage \"\${bty}/nix/cijoe.nix\" { }";
      description = ''
        The cijoe that online provisioning runs (`cijoe-online`) use: `settings.cijoe.command`
        points at it. null leaves `cijoe` to be found on the unit's PATH.
      '';
    };

    liveEnvironment = lib.mkOption {
      type = lib.types.nullOr lib.types.package;
      default = null;
      example = lib.literalExpression "bty.packages.x86_64-linux.live-x86";
      description = ''
        The network-booted live environment (a directory with `vmlinuz` and `initrd`, and
        `passthru.kernelParams`), e.g. this flake's `live-x86`. Its files are copied into the
        boot directory at each start and its kernel parameters become
        `boot.extra_kernel_args`. When null, upload them with `PUT /boot/NAME`.
      '';
    };

    settings = lib.mkOption {
      default = { };
      description = ''
        bty.toml, rendered with pkgs.formats.toml. See `bty-web show-config` for every key.
        Keys left null are not written, so bty-web's own default applies.
        `admin.password` does not belong here (the store is world-readable): use
        `adminPasswordFile`.
      '';
      type = lib.types.submodule {
        freeformType = settingsFormat.type;
        options = {
          server = lib.mkOption {
            default = { };
            type = lib.types.submodule {
              freeformType = settingsFormat.type;
              options = {
                host = lib.mkOption {
                  type = lib.types.str;
                  default = "0.0.0.0";
                  description = "Address to listen on.";
                };
                port = lib.mkOption {
                  type = lib.types.port;
                  default = 8080;
                  description = "HTTP port (below 1024 the unit gets CAP_NET_BIND_SERVICE, nothing else).";
                };
                public_url = lib.mkOption {
                  type = lib.types.nullOr lib.types.str;
                  default = null;
                  example = "http://192.168.1.10:8080";
                  description = "URL machines use to reach the server (default: each request's Host header).";
                };
              };
            };
          };
          paths = lib.mkOption {
            default = { };
            type = lib.types.submodule {
              freeformType = settingsFormat.type;
              options = {
                state_dir = lib.mkOption {
                  type = lib.types.str;
                  default = cfg.stateDir;
                  defaultText = lib.literalExpression "config.services.bty-web.stateDir";
                  readOnly = true;
                  description = "Set through `stateDir`, which also names the systemd StateDirectory.";
                };
                boot_dir = lib.mkOption {
                  type = lib.types.nullOr lib.types.str;
                  default = null;
                  description = "Live environment files and iPXE binaries (default `<stateDir>/boot`).";
                };
              };
            };
          };
          boot = lib.mkOption {
            default = { };
            type = lib.types.submodule {
              freeformType = settingsFormat.type;
              options = {
                kernel = lib.mkOption {
                  type = lib.types.str;
                  default = "vmlinuz";
                  description = "Live kernel's file name in the boot directory.";
                };
                initrd = lib.mkOption {
                  type = lib.types.str;
                  default = "initrd.gz";
                  description = "Live initrd's file name in the boot directory.";
                };
              };
            };
          };
        };
      };
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = !(cfg.settings ? admin && cfg.settings.admin ? password);
            message = "services.bty-web.settings.admin.password would be world-readable in the Nix store; use services.bty-web.adminPasswordFile.";
          }
          {
            assertion = cfg.proxyDhcp.enable -> cfg.proxyDhcp.interface != null;
            message = "services.bty-web.proxyDhcp.interface must name the interface to answer PXE clients on (e.g. \"eth0\").";
          }
        ];

        # The CLI (show-config, backup, restore) is on PATH and sees the service's configuration.
        environment.systemPackages = [ cfg.package ];
        environment.etc."bty/bty.toml".source = configFile;
        environment.sessionVariables.BTY_CONFIG_FILE = "/etc/bty/bty.toml";

        users.users = lib.mkIf (cfg.user == "bty-web") {
          bty-web = {
            isSystemUser = true;
            inherit (cfg) group;
            home = cfg.stateDir;
            description = "bty provisioning server";
          };
        };
        users.groups = lib.mkIf (cfg.group == "bty-web") { bty-web = { }; };

        systemd.services.bty-web = {
          description = "bty provisioning server";
          documentation = [ "https://example.invalid/bty" ];
          wantedBy = [ "multi-user.target" ];
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ];
          restartTriggers = [ configFile ];

          # Boot files from the Nix store are copied, not linked: bty-web never serves a symlink
          # that leads out of the boot directory. A copy is made only when the content differs
          # (no rewrite at every start), renamed into place under a hidden name so a download
          # never sees half a file; an operator's PUT /boot/NAME is replaced at the next start.
          preStart = lib.optionalString (live != null || cfg.tftp.enable || cfg.proxyDhcp.enable) ''
            mkdir -p ${lib.escapeShellArg bootDir}
            install_boot() {
              if [ -L "$2" ] || [ ! -f "$2" ] || [ "$(sha256sum < "$1")" != "$(sha256sum < "$2")" ]; then
                install -m 0644 "$1" "$(dirname "$2")/.$(basename "$2").nixos"
                mv -f "$(dirname "$2")/.$(basename "$2").nixos" "$2"
              fi
            }
          '' + lib.optionalString (live != null) ''
            install_boot ${live}/vmlinuz ${lib.escapeShellArg "${bootDir}/${cfg.settings.boot.kernel}"}
            install_boot ${live}/initrd ${lib.escapeShellArg "${bootDir}/${cfg.settings.boot.initrd}"}
          '' + lib.optionalString (cfg.tftp.enable || cfg.proxyDhcp.enable) ''
            for f in undionly.kpxe ipxe.efi; do
              install_boot ${ipxe}/$f ${lib.escapeShellArg bootDir}/$f
            done
          '' + lib.optionalString cfg.imagesGroupWritable ''
            mkdir -p ${lib.escapeShellArg "${cfg.stateDir}/images"}
            chmod 2770 ${lib.escapeShellArg "${cfg.stateDir}/images"}
          '';

          serviceConfig = {
            Type = "exec";
            ExecStart = start;
            User = cfg.user;
            Group = cfg.group;
            StateDirectory = lib.removePrefix "/var/lib/" cfg.stateDir;
            # Owner only (bty-web tightens anything looser); the group may only pass through to a
            # group-writable images/.
            StateDirectoryMode = if cfg.imagesGroupWritable then "0710" else "0700";
            WorkingDirectory = cfg.stateDir;
            LoadCredential = lib.optional (cfg.adminPasswordFile != null) "admin-password:${cfg.adminPasswordFile}";
            # Unlike LoadCredential=, a credential that is not there is no error.
            ImportCredential = [ "bty-web.admin-password" ];
            Restart = "on-failure";
            RestartSec = 2;
            # SIGTERM lets bty-web finish in-flight requests and checkpoint the SQLite WAL.
            KillSignal = "SIGTERM";
            TimeoutStopSec = 30;
            # Each connection is a file descriptor: systemd's default soft limit
            # (1024) is a few hundred boot clients. bty-web raises its soft limit
            # to this hard one and serves at most 64 fewer connections at once.
            LimitNOFILE = 65536;

            # Hardening: bty-web needs the network, its state directory and nothing else.
            UMask = "0027";
            AmbientCapabilities = lib.optional lowPorts "CAP_NET_BIND_SERVICE";
            CapabilityBoundingSet = lib.optional lowPorts "CAP_NET_BIND_SERVICE";
            NoNewPrivileges = true;
            ProtectSystem = "strict";
            ProtectHome = true;
            PrivateTmp = true;
            PrivateDevices = true;
            PrivateUsers = !lowPorts;
            ProtectHostname = true;
            ProtectClock = true;
            ProtectKernelTunables = true;
            ProtectKernelModules = true;
            ProtectKernelLogs = true;
            ProtectControlGroups = true;
            ProtectProc = "invisible";
            ProcSubset = "pid";
            RestrictAddressFamilies = [
              "AF_INET"
              "AF_INET6"
              "AF_UNIX"
            ]
            # The interfaces' addresses (TFTP listens on each, ProxyDHCP finds its own).
            ++ lib.optional (cfg.tftp.enable || cfg.proxyDhcp.enable) "AF_NETLINK";
            RestrictNamespaces = true;
            RestrictRealtime = true;
            RestrictSUIDSGID = true;
            LockPersonality = true;
            MemoryDenyWriteExecute = true;
            RemoveIPC = true;
            SystemCallArchitectures = "native";
            SystemCallFilter = [
              "@system-service"
              "~@privileged"
              "~@resources"
            ];
          };
        };

        networking.firewall = lib.mkIf cfg.openFirewall {
          allowedTCPPorts = [ port ];
          allowedUDPPorts =
            lib.optional (cfg.tftp.enable || cfg.proxyDhcp.enable) 69
            ++ lib.optionals cfg.proxyDhcp.enable [
              67
              4011
            ];
        };
      }

      (lib.mkIf (live != null) {
        services.bty-web.settings.boot = {
          initrd = lib.mkDefault "initrd";
          extra_kernel_args = lib.mkDefault (toString (live.kernelParams or [ ]));
        };
      })

      (lib.mkIf (cfg.tftp.enable || cfg.proxyDhcp.enable) {
        services.bty-web.settings.tftp.enabled = lib.mkDefault true;
      })

      # Only the keys that are set: an [os] table appears on hosts that update themselves.
      (lib.mkIf (osSettings != { }) {
        services.bty-web.settings.os = lib.mapAttrs (_: lib.mkDefault) osSettings;
      })

      (lib.mkIf (cfg.cijoe.package != null) {
        services.bty-web.settings.cijoe.command = lib.mkDefault (lib.getExe cfg.cijoe.package);
      })

      (lib.mkIf cfg.proxyDhcp.enable {
        services.bty-web.settings.proxy_dhcp = {
          enabled = lib.mkDefault true;
          interface = lib.mkDefault cfg.proxyDhcp.interface;
          # nixpkgs' ipxe builds ipxe.efi (with its own drivers), not snponly.efi.
          efi_boot_file = lib.mkDefault "ipxe.efi";
        }
        // lib.optionalAttrs (cfg.proxyDhcp.advertiseAddress != null) {
          advertise_address = lib.mkDefault cfg.proxyDhcp.advertiseAddress;
        };
      })
    ]
  );
}

# Evaluates nixos-modules/*.nix with nixpkgs' lib and the stubs beside this file, and checks
# what the modules produce for a few configurations. Run by checks/nix-eval.sh:
#   nix-instantiate --eval --strict --json checks/nix/eval-modules.nix --arg nixpkgsLib PATH
# The result is a list of { name; ok; detail; } (ok = false never aborts the others).
{ nixpkgsLib }:

let
  lib = import nixpkgsLib;
  stubs = import ./stubs.nix { inherit lib; };
  modules = ../../nixos-modules;

  eval =
    config:
    (lib.evalModules {
      modules = [
        stubs.module
        (modules + "/bty-web.nix")
        (modules + "/bty-live.nix")
        (modules + "/bty-usb.nix")
        (modules + "/appliance.nix")
        config
      ];
      specialArgs = {
        inherit (stubs) pkgs;
        modulesPath = "/stub/nixos/modules";
      };
    }).config;

  failedAssertions = c: map (a: a.message) (lib.filter (a: !a.assertion) c.assertions);

  # Options of mkRemovedOptionModule: their value throws by design (defining one is a failed
  # assertion), so forcing the configuration leaves them out.
  removedOptions = [
    [ "services" "bty-web" "proxyDhcp" "subnet" ]
    [ "services" "bty-web" "proxyDhcp" "interfaces" ]
  ];
  withoutRemoved =
    c:
    lib.updateManyAttrsByPath (map (p: {
      path = lib.init p;
      update = old: removeAttrs old [ (lib.last p) ];
    }) removedOptions) c;

  # Forces the whole configuration, so type errors anywhere in it surface here.
  evaluates = c: (builtins.tryEval (builtins.deepSeq (builtins.toJSON (withoutRemoved (lib.filterAttrs (n: _: n != "_module") c))) true)).success;

  check = name: ok: detail: { inherit name ok detail; };

  web = eval { services.bty-web.enable = true; };
  webUnit = web.systemd.services.bty-web;

  web80 = eval {
    services.bty-web = {
      enable = true;
      openFirewall = true;
      adminPasswordFile = "/run/secrets/bty";
      settings.server.port = 80;
      settings.server.public_url = "http://10.0.0.1";
      settings.limits.max_upload_bytes = 1024 * 1024 * 1024;
      proxyDhcp = {
        enable = true;
        interface = "eth0";
      };
      tftp.enable = true;
    };
  };
  web80Unit = web80.systemd.services.bty-web;

  live = eval { services.bty-live.enable = true; };
  usb = eval { services.bty-usb.enable = true; };
  appliance = eval { services.bty-appliance.enable = true; };
  applianceOs = eval {
    services.bty-appliance = {
      enable = true;
      os.enable = true;
    };
  };
  # Units the checks below read, empty when missing so that one check fails, not all of them.
  aos = lib.genAttrs [
    "bty-health"
    "bty-secrets"
    "bty-ssh-host-keys"
    "bty-state-layout"
    "bty-web"
  ] (n: applianceOs.systemd.services.${n} or { });

  rendered = c: lib.filterAttrsRecursive (_: v: v != null) c.services.bty-web.settings;
in
[
  (check "bty-web: default configuration evaluates, no failed assertion" (
    evaluates web && failedAssertions web == [ ]
  ) (failedAssertions web))
  (check "bty-web: bty.toml gets server.port 8080, paths.state_dir /var/lib/bty, no null keys"
    (
      let
        r = rendered web;
      in
      r.server.port == 8080 && r.paths.state_dir == "/var/lib/bty" && !(r.server ? public_url)
    )
    (rendered web)
  )
  (check "bty-web: StateDirectory=bty, dedicated user, no capability on port 8080" (
    webUnit.serviceConfig.StateDirectory == "bty"
    && webUnit.serviceConfig.User == "bty-web"
    && webUnit.serviceConfig.CapabilityBoundingSet == [ ]
    && webUnit.serviceConfig.AmbientCapabilities == [ ]
    && web.users.users ? bty-web
  ) webUnit.serviceConfig)
  (check "bty-web: hardened (ProtectSystem=strict, NoNewPrivileges, syscall filter, no DNS/TFTP unless asked)" (
    webUnit.serviceConfig.ProtectSystem == "strict"
    && webUnit.serviceConfig.NoNewPrivileges
    && lib.elem "@system-service" webUnit.serviceConfig.SystemCallFilter
    && !(web.services.dnsmasq.enable or false)
  ) null)
  (check "bty-web: the CLI sees the service's bty.toml (/etc/bty/bty.toml, BTY_CONFIG_FILE)" (
    web.environment.etc ? "bty/bty.toml"
    && web.environment.sessionVariables.BTY_CONFIG_FILE == "/etc/bty/bty.toml"
  ) null)
  (check "bty-web: port 80 gets CAP_NET_BIND_SERVICE and nothing else" (
    web80Unit.serviceConfig.CapabilityBoundingSet == [ "CAP_NET_BIND_SERVICE" ]
    && web80Unit.serviceConfig.AmbientCapabilities == [ "CAP_NET_BIND_SERVICE" ]
  ) web80Unit.serviceConfig.CapabilityBoundingSet)
  (check "bty-web: adminPasswordFile is a systemd credential, not a setting" (
    web80Unit.serviceConfig.LoadCredential == [ "admin-password:/run/secrets/bty" ]
    && !((rendered web80) ? admin)
  ) web80Unit.serviceConfig.LoadCredential)
  (check "bty-web: freeform settings pass through (limits.max_upload_bytes)" (
    (rendered web80).limits.max_upload_bytes == 1073741824
  ) (rendered web80).limits)
  (check "bty-web: TFTP and ProxyDHCP are bty-web's own (settings, iPXE into the boot dir), no dnsmasq" (
    let
      r = rendered web80;
    in
    !(web80.services.dnsmasq.enable or false)
    && r.tftp.enabled
    && r.proxy_dhcp.enabled
    && r.proxy_dhcp.interface == "eth0"
    && r.proxy_dhcp.efi_boot_file == "ipxe.efi"
    && lib.hasInfix "undionly.kpxe ipxe.efi" web80Unit.preStart
  ) (rendered web80))
  (check "bty-web: TFTP alone on port 8080 still gets CAP_NET_BIND_SERVICE (port 69), and only that" (
    let
      u = (eval {
        services.bty-web = {
          enable = true;
          tftp.enable = true;
        };
      }).systemd.services.bty-web.serviceConfig;
    in
    u.CapabilityBoundingSet == [ "CAP_NET_BIND_SERVICE" ] && u.AmbientCapabilities == [ "CAP_NET_BIND_SERVICE" ]
  ) null)
  (check "bty-web: ProxyDHCP alone implies TFTP (settings, advertise_address, CAP_NET_BIND_SERVICE, 67, 69, 4011/udp)" (
    let
      c = eval {
        services.bty-web = {
          enable = true;
          openFirewall = true;
          proxyDhcp = {
            enable = true;
            interface = "eth1";
            advertiseAddress = "192.168.1.2";
          };
        };
      };
      r = rendered c;
      u = c.systemd.services.bty-web.serviceConfig;
    in
    evaluates c
    && failedAssertions c == [ ]
    && r.tftp.enabled
    && r.proxy_dhcp.enabled
    && r.proxy_dhcp.interface == "eth1"
    && r.proxy_dhcp.advertise_address == "192.168.1.2"
    && u.AmbientCapabilities == [ "CAP_NET_BIND_SERVICE" ]
    && lib.elem "AF_NETLINK" u.RestrictAddressFamilies
    && lib.sort lib.lessThan (lib.flatten c.networking.firewall.allowedUDPPorts) == [
      67
      69
      4011
    ]
  ) (rendered web80))
  (check "bty-web: openFirewall without TFTP or ProxyDHCP opens the HTTP port only" (
    let
      f = (eval {
        services.bty-web = {
          enable = true;
          openFirewall = true;
        };
      }).networking.firewall;
    in
    lib.flatten f.allowedTCPPorts == [ 8080 ] && lib.flatten (f.allowedUDPPorts or [ ]) == [ ]
  ) null)
  (check "bty-web: the removed proxyDhcp.subnet and proxyDhcp.interfaces are refused, pointing to proxyDhcp.interface" (
    lib.all (
      def:
      let
        failed = failedAssertions (eval {
          services.bty-web = {
            enable = true;
            proxyDhcp = def;
          };
        });
      in
      failed != [ ] && lib.all (lib.hasInfix "proxyDhcp.interface") failed
    ) [
      { subnet = "192.168.1.0/24"; }
      { interfaces = [ "eth0" ]; }
    ]
  ) null)
  (check "bty-web: openFirewall opens 80/tcp and 67, 69, 4011/udp" (
    lib.elem 80 (lib.flatten web80.networking.firewall.allowedTCPPorts)
    && lib.all (p: lib.elem p (lib.flatten web80.networking.firewall.allowedUDPPorts)) [
      67
      69
      4011
    ]
  ) web80.networking.firewall)
  (check "bty-web: settings.admin.password is refused (it would be world-readable in the store)" (
    failedAssertions (eval {
      services.bty-web = {
        enable = true;
        settings.admin.password = "secret";
      };
    }) != [ ]
  ) null)
  (check "bty-web: ProxyDHCP without an interface is refused" (
    failedAssertions (eval {
      services.bty-web = {
        enable = true;
        proxyDhcp.enable = true;
      };
    }) != [ ]
  ) null)
  (check "bty-web: a stateDir outside /var/lib is a type error" (
    !(evaluates (eval {
      services.bty-web = {
        enable = true;
        stateDir = "/srv/bty";
      };
    }))
  ) null)
  (check "bty-web: settings.server.port must be a port" (
    !(evaluates (eval {
      services.bty-web = {
        enable = true;
        settings.server.port = 70000;
      };
    }))
  ) null)
  (check "bty-web: liveEnvironment sets boot.initrd and extra_kernel_args from passthru.kernelParams, copies its files" (
    let
      c = eval {
        services.bty-web = {
          enable = true;
          liveEnvironment = stubs.fakeDrv "live" // {
            kernelParams = [
              "init=/nix/store/x/init"
              "loglevel=4"
            ];
          };
        };
      };
    in
    c.services.bty-web.settings.boot.initrd == "initrd"
    && c.services.bty-web.settings.boot.extra_kernel_args == "init=/nix/store/x/init loglevel=4"
    # Copied into the boot directory (install_boot), not linked out of it.
    && lib.hasInfix "install_boot ${stubs.fakeDrv "live"}/initrd /var/lib/bty/boot/initrd" c.systemd.services.bty-web.preStart
    && !(lib.hasInfix "ln -s" c.systemd.services.bty-web.preStart)
  ) null)
  (check "bty-web: online CIJOE runs use the packaged cijoe (settings.cijoe.command); null leaves PATH's" (
    let
      none = eval {
        services.bty-web = {
          enable = true;
          cijoe.package = null;
        };
      };
    in
    (rendered web).cijoe.command == "${stubs.fakeDrv "cijoe"}/bin/cijoe"
    && !((rendered none) ? cijoe && (rendered none).cijoe ? command)
  ) (rendered web).cijoe or null)
  (check "bty-live: the agent finds the packaged cijoe on its PATH (cijoe-offline); cijoe.enable = false drops it" (
    let
      off = eval {
        services.bty-live = {
          enable = true;
          cijoe.enable = false;
        };
      };
    in
    live.systemd.services.bty-flash-on-boot.path == [ (stubs.fakeDrv "cijoe") ]
    && lib.elem (stubs.fakeDrv "cijoe") live.environment.systemPackages
    && off.systemd.services.bty-flash-on-boot.path == [ ]
    && !(lib.elem (stubs.fakeDrv "cijoe") off.environment.systemPackages)
  ) live.systemd.services.bty-flash-on-boot.path)
  (check "bty-live: flash-on-boot unless bty.mode=interactive, TUI on tty1 only then" (
    let
      f = live.systemd.services.bty-flash-on-boot;
      t = live.systemd.services.bty-tui-on-tty1;
    in
    evaluates live
    && lib.elem "!bty.mode=interactive" f.unitConfig.ConditionKernelCommandLine
    && lib.elem "bty.server" f.unitConfig.ConditionKernelCommandLine
    && lib.elem "bty.mode=interactive" t.unitConfig.ConditionKernelCommandLine
    && t.serviceConfig.TTYPath == "/dev/tty1"
    && lib.elem "getty@tty1.service" t.conflicts
  ) null)
  (check "bty-usb: BTY_IMAGES (exFAT) at /var/lib/bty/images, root autologin on tty1 only" (
    let
      fs = usb.fileSystems."/var/lib/bty/images";
    in
    evaluates usb
    && fs.fsType == "exfat"
    && fs.device == "/dev/disk/by-label/BTY_IMAGES"
    && lib.elem "nofail" fs.options
    && lib.hasInfix "--autologin root" (lib.last usb.systemd.services."getty@tty1".serviceConfig.ExecStart)
    && !(usb.services.getty ? autologinUser)
  ) null)
  (check "appliance: users bty and odus, odus with passwordless sudo, SSH, bty-web with TFTP" (
    evaluates appliance
    && failedAssertions appliance == [ ]
    && appliance.users.users.bty.isNormalUser
    && lib.elem "wheel" appliance.users.users.odus.extraGroups
    && (lib.head appliance.security.sudo.extraRules).users == [ "odus" ]
    && appliance.services.openssh.enable
    && appliance.services.bty-web.enable
    && appliance.services.bty-web.tftp.enable
    && (rendered appliance).tftp.enabled
    && !(appliance.services.dnsmasq.enable or false)
    && appliance.systemd.services ? bty-appliance-first-boot
  ) null)
  (check "appliance os: evaluates; root is /dev/bty-root, ESP and bty-state by partition label, /var/lib/bty a bind of bty-state's bty/" (
    let
      fs = applianceOs.fileSystems;
    in
    evaluates applianceOs
    && failedAssertions applianceOs == [ ]
    && (fs."/".device or null) == "/dev/bty-root"
    && (fs."/boot".device or null) == "/dev/disk/by-partlabel/bty-esp"
    && lib.elem "gid=6" (fs."/boot".options or [ ])
    && (fs."/var/lib/bty-state".device or null) == "/dev/disk/by-partlabel/bty-state"
    && lib.elem "x-systemd.growfs" (fs."/var/lib/bty-state".options or [ ])
    && (fs."/var/lib/bty".device or null) == "/var/lib/bty-state/bty"
    && lib.elem "bind" (fs."/var/lib/bty".options or [ ])
    && lib.elem "x-systemd.requires=bty-state-layout.service" (fs."/var/lib/bty".options or [ ])
  ) applianceOs.fileSystems)
  (check "appliance os: bty-health.service is RequiredBy= and Before= boot-complete.target, after bty-web, reboots on failure, bounded" (
    let
      h = aos.bty-health;
      port9090 =
        (eval {
          services.bty-appliance = {
            enable = true;
            os.enable = true;
            os.healthTimeout = 60;
          };
          services.bty-web.settings.server.port = 9090;
        }).systemd.services.bty-health.serviceConfig or { };
    in
    (h.requiredBy or [ ]) == [ "boot-complete.target" ]
    && lib.elem "boot-complete.target" (h.before or [ ])
    && lib.elem "bty-web.service" (h.after or [ ])
    && !(lib.elem "bty-web.service" (h.requires or [ ]))
    && (h.unitConfig.FailureAction or null) == "reboot"
    && (h.serviceConfig.Type or null) == "oneshot"
    && (h.serviceConfig.ExecStart or null)
      == "${stubs.fakeDrv "bty"}/bin/bty os health --url http://127.0.0.1:8080/healthz --timeout 300"
    && (h.serviceConfig.TimeoutStartSec or null) == 330
    && lib.hasSuffix "--url http://127.0.0.1:9090/healthz --timeout 60" (port9090.ExecStart or "")
    && (port9090.TimeoutStartSec or null) == 90
  ) aos.bty-health)
  (check "appliance os: bty-secrets.service unpacks the partition into /run/bty-secrets; bty-web after it, its admin password through the credential store" (
    let
      sec = aos.bty-secrets;
      dev = "dev-disk-by\\x2dpartlabel-bty\\x2dsecrets.device";
    in
    lib.hasInfix "${stubs.fakeDrv "bty"}/bin/bty os secrets unpack /run/bty-secrets --device /dev/disk/by-partlabel/bty-secrets" (sec.script or "")
    && lib.hasInfix "/run/credstore/bty-web.admin-password" (sec.script or "")
    && (sec.requires or [ ]) == [ dev ]
    && (sec.after or [ ]) == [ dev ]
    && (sec.serviceConfig.UMask or null) == "0077"
    && lib.elem "bty-secrets.service" (aos.bty-web.after or [ ])
    && (aos.bty-web.serviceConfig.ImportCredential or null) == [ "bty-web.admin-password" ]
    && applianceOs.services.bty-appliance.os.secretsDirectory == "/run/bty-secrets"
  ) aos.bty-secrets)
  (check "appliance os: bty-web may apply releases (block devices, the disk group, the ESP writable); elsewhere it keeps PrivateDevices" (
    let
      u = aos.bty-web.serviceConfig or { };
    in
    (u.PrivateDevices or null) == false
    && (u.SupplementaryGroups or null) == [ "disk" ]
    && (u.ReadWritePaths or null) == [ "/boot" ]
    && (webUnit.serviceConfig.PrivateDevices or null) == true
    && !(webUnit.serviceConfig ? SupplementaryGroups)
  ) (aos.bty-web.serviceConfig or null))
  (check "appliance os: SSH host keys on bty-state (ssh/ 0700), copied from /run/bty-secrets before sshd generates missing ones" (
    let
      k = aos.bty-ssh-host-keys;
    in
    map (h: h.path) (applianceOs.services.openssh.hostKeys or [ ]) == [
      "/var/lib/bty-state/ssh/ssh_host_ed25519_key"
      "/var/lib/bty-state/ssh/ssh_host_rsa_key"
    ]
    && lib.all (u: lib.elem u (k.before or [ ])) [
      "sshd-keygen.service"
      "sshd.service"
    ]
    && lib.elem "bty-secrets.service" (k.after or [ ])
    && lib.hasInfix "/run/bty-secrets/ssh/ssh_host_ed25519_key" (k.script or "")
    && lib.hasInfix "install -d -m 0700 -o root -g root /var/lib/bty-state/ssh" (aos.bty-state-layout.script or "")
  ) aos.bty-ssh-host-keys)
  (check "appliance os: udev names the booted slot /dev/bty-root in the initrd and after, from bty.slot= or LoaderEntrySelected; panic=10; bty-state grown in the initrd" (
    let
      rules = applianceOs.boot.initrd.services.udev.rules or "";
      program = lib.head (applianceOs.boot.initrd.systemd.storePaths or [ { text = ""; } ]);
    in
    rules == (applianceOs.services.udev.extraRules or null)
    && lib.hasInfix ''IMPORT{program}="${program}"'' rules
    && lib.hasInfix ''ENV{ID_PART_ENTRY_NAME}=="bty-a", ENV{BTY_BOOTED_SLOT}=="a", SYMLINK+="bty-root"'' rules
    && lib.hasInfix ''ENV{ID_PART_ENTRY_NAME}=="bty-b", ENV{BTY_BOOTED_SLOT}=="b", SYMLINK+="bty-root"'' rules
    && lib.hasInfix "LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f" (program.text or "")
    && lib.hasInfix "bty.slot=" (program.text or "")
    && (applianceOs.boot.initrd.systemd.enable or false)
    && lib.all (p: lib.elem p applianceOs.boot.kernelParams) [
      "bty.slot=auto"
      "panic=10"
      "boot.panic_on_fail"
    ]
    && (applianceOs.boot.initrd.systemd.repart.enable or false)
    && (applianceOs.systemd.repart.partitions."30-secrets".Weight or null) == 0
    && (applianceOs.systemd.repart.partitions."40-state".Type or null) == "linux-generic"
    && !applianceOs.systemd.enableEmergencyMode
  ) null)
  (check "bty-web: [os] esp, source and pubkey rendered when set (the appliance sets esp), no [os] table otherwise" (
    let
      set = rendered (eval {
        services.bty-web = {
          enable = true;
          os.source = "https://releases.example/bty";
          os.pubkey = "/etc/bty/minisign.pub";
        };
      });
    in
    ((rendered applianceOs).os or null) == { esp = "/boot"; }
    && (set.os or null) == {
      source = "https://releases.example/bty";
      pubkey = "/etc/bty/minisign.pub";
    }
    && !((rendered web) ? os)
    && !((rendered appliance) ? os)
  ) (rendered applianceOs).os or null)
  (check "appliance os: without the appliance it is refused" (
    failedAssertions (eval { services.bty-appliance.os.enable = true; }) != [ ]
  ) null)
  (check "modules that are not enabled add nothing" (
    let
      c = eval { };
    in
    c.systemd.services == { } && c.fileSystems == { } && c.environment.systemPackages == [ ]
  ) null)
]

# The appliance's A/B side (PRODUCT §8), for the disk images/server-x86.nix writes: a GPT with
# the ESP (systemd-boot), root slots `bty-a` and `bty-b`, `bty-secrets` and `bty-state`.
#
# Which slot is root. A release carries one UKI for both slots, so its kernel command line
# cannot name the partition: it says `bty.slot=auto`, and the slot is the one in the name of the
# entry systemd-boot booted (`LoaderEntrySelected`: `bty-b_1.3.0+2-1.efi`). A udev rule, in the
# initrd and after it, asks a small program for that slot and names its partition /dev/bty-root,
# which is what fileSystems."/" mounts. Being a real device, the initrd waits for it like for any
# root, fsck checks the slot actually mounted (not the other one, which may be half-written), and
# a slot that is missing fails the boot, which spends one of its tries. `bty.slot=a|b` first on
# the command line wins (direct kernel boots, rescue), as it does for `bty os status`; with
# neither, slot a, the one the disk was written with.
#
# Boot counting. `bty os apply` installs the new slot's entry with `+3`; systemd-boot counts the
# tries down, and systemd-bless-boot (its generator pulls it in whenever a counted entry booted;
# NixOS ships the unit and boot-complete.target) drops the counter once boot-complete.target is
# reached, which requires bty-health.service. A failed or timed-out check, a kernel panic
# (panic=10), an initrd that cannot mount root (boot.panic_on_fail) and a hung system (the
# watchdog) all end in a reboot, so every failure spends a try, and systemd-boot falls back to the
# other slot once they are gone.
#
# What survives an update. The slots are replaced whole; `bty-state` never is. It is mounted at
# /var/lib/bty-state (grown to the end of the disk on first boot) and holds bty-web's state
# directory, bind-mounted at /var/lib/bty where bty-web and its documentation expect it, and the
# SSH host keys (ssh/). They are siblings, not the keys inside /var/lib/bty, because systemd
# re-owns a StateDirectory= recursively to the service's user whenever its top directory's owner
# differs (first boot, a uid that changed between slots), which would hand the keys to bty-web.
# Everything else on the root file system belongs to its slot: /etc/shadow too, so after an
# update the console and SSH logins are back to the initial password, expired again.
#
# Per-host secrets. `bty-secrets` holds an uncompressed ustar archive from its first byte (all
# zeros: none), written by `bty os personalize`. bty-secrets.service unpacks it into
# /run/bty-secrets (root only, gone at shutdown): SSH host keys found there replace the generated
# ones, `bty/admin-password` becomes bty-web's admin password, `tls/cert.pem` and `tls/key.pem`
# are there for a reverse proxy in front of bty-web.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.bty-appliance.os;
  web = config.services.bty-web;
  bty = lib.getExe' config.programs.bty.package "bty";

  persistent = "/var/lib/bty-state";
  secretsDevice = "/dev/disk/by-partlabel/bty-secrets";
  # systemd's name for secretsDevice (utils.escapeSystemdPath, spelled out: this module is also
  # evaluated without NixOS's utils).
  secretsDeviceUnit = "dev-disk-by\\x2dpartlabel-bty\\x2dsecrets.device";

  hostKeys = [
    {
      type = "ed25519";
      path = "${persistent}/ssh/ssh_host_ed25519_key";
    }
    {
      type = "rsa";
      bits = 4096;
      path = "${persistent}/ssh/ssh_host_rsa_key";
    }
  ];

  # For udev's IMPORT{program}: prints BTY_BOOTED_SLOT=a|b. Bash alone (no coreutils), because it
  # runs in the initrd as well. An efivar is 4 attribute bytes and then UTF-16LE; bash drops the
  # NUL bytes of the substitution (the warning saying so is silenced), which leaves the name.
  slotProgram = pkgs.writeShellScript "bty-booted-slot" ''
    slot=
    read -r -a words < /proc/cmdline
    for w in "''${words[@]}"; do
      case $w in
        bty.slot=a | bty.slot=bty-a) slot=a; break ;;
        bty.slot=b | bty.slot=bty-b) slot=b; break ;;
        bty.slot=*) break ;;
      esac
    done
    if [ -z "$slot" ]; then
      entry=
      { entry=$(< /sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f); } 2>/dev/null
      case $entry in
        *bty-a_*) slot=a ;;
        *bty-b_*) slot=b ;;
      esac
    fi
    echo "BTY_BOOTED_SLOT=''${slot:-a}"
  '';

  slotRules = ''
    SUBSYSTEM=="block", ACTION!="remove", ENV{ID_PART_ENTRY_NAME}=="bty-a|bty-b", IMPORT{program}="${slotProgram}"
    SUBSYSTEM=="block", ACTION!="remove", ENV{ID_PART_ENTRY_NAME}=="bty-a", ENV{BTY_BOOTED_SLOT}=="a", SYMLINK+="bty-root"
    SUBSYSTEM=="block", ACTION!="remove", ENV{ID_PART_ENTRY_NAME}=="bty-b", ENV{BTY_BOOTED_SLOT}=="b", SYMLINK+="bty-root"
  '';

  # bty-web's own address when it listens on one, else loopback.
  healthUrl =
    let
      host = web.settings.server.host;
      local = lib.elem host [
        "0.0.0.0"
        "::"
        "[::]"
        ""
      ];
      h =
        if local then
          "127.0.0.1"
        else if lib.hasInfix ":" host && !(lib.hasPrefix "[" host) then
          "[${host}]"
        else
          host;
    in
    "http://${h}:${toString web.settings.server.port}/healthz";
in
{
  options.services.bty-appliance.os = {
    enable = lib.mkEnableOption ''
      the appliance's A/B side: root from the slot systemd-boot booted, bty-health.service
      blessing a counted boot, per-host secrets from the bty-secrets partition, bty-web's state
      and the SSH host keys on bty-state. For the disk images/server-x86.nix builds'';

    healthTimeout = lib.mkOption {
      type = lib.types.ints.positive;
      default = 300;
      description = ''
        Seconds bty-health.service waits for bty-web's /healthz to answer ok before the boot is
        judged bad and the machine reboots (spending one of the slot's tries). A first boot
        after an update migrates the database before bty-web answers.
      '';
    };

    espMountPoint = lib.mkOption {
      type = lib.types.strMatching "/.*";
      default = "/boot";
      description = "Where the EFI system partition is mounted (and what bty-web's `os.esp` says).";
    };

    secretsDirectory = lib.mkOption {
      type = lib.types.str;
      default = "/run/bty-secrets";
      readOnly = true;
      description = ''
        Where bty-secrets.service unpacks this host's secrets (root only, mode 0600 files in
        0700 directories): `ssh/ssh_host_ed25519_key[.pub]`, `ssh/ssh_host_rsa_key[.pub]`,
        `bty/admin-password`, and `tls/cert.pem` with `tls/key.pem` for a reverse proxy in
        front of bty-web (order it after bty-secrets.service).
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = config.services.bty-appliance.enable;
        message = "services.bty-appliance.os.enable is the A/B side of the appliance: it needs services.bty-appliance.enable.";
      }
    ];

    fileSystems = {
      "/" = {
        device = "/dev/bty-root";
        fsType = "ext4";
      };
      # Root's and the disk group's (bty-web writes boot entries here), nobody else's.
      ${cfg.espMountPoint} = {
        device = "/dev/disk/by-partlabel/bty-esp";
        fsType = "vfat";
        options = [
          "gid=${toString config.ids.gids.disk}"
          "fmask=0117"
          "dmask=0007"
        ];
      };
      ${persistent} = {
        device = "/dev/disk/by-partlabel/bty-state";
        fsType = "ext4";
        # The partition was grown in the initrd; the file system follows when mounted.
        options = [ "x-systemd.growfs" ];
      };
      ${web.stateDir} = {
        device = "${persistent}/bty";
        fsType = "none";
        options = [
          "bind"
          "x-systemd.requires=bty-state-layout.service"
        ];
        depends = [ persistent ];
      };
    };

    boot.initrd.systemd.enable = true;
    boot.initrd.services.udev.rules = slotRules;
    boot.initrd.systemd.storePaths = [ slotProgram ];
    services.udev.extraRules = slotRules;

    # Grows bty-state into the rest of the disk the image was written to. systemd-repart matches
    # definitions to partitions by type, in table order: bty-secrets and bty-state are the two
    # linux-generic ones; the ESP and the slots match nothing and are left as they are.
    boot.initrd.systemd.repart.enable = true;
    systemd.repart.partitions = {
      "30-secrets" = {
        Type = "linux-generic";
        Weight = 0;
      };
      "40-state".Type = "linux-generic";
    };

    boot.kernelParams = [
      "bty.slot=auto"
      "panic=10"
      "boot.panic_on_fail"
    ];
    systemd.settings.Manager.RuntimeWatchdogSec = lib.mkDefault "30s";
    # A mount that fails must not stop the boot at a locked console: the health check fails
    # instead, and the machine reboots.
    systemd.enableEmergencyMode = lib.mkDefault false;

    services.bty-web.os.esp = lib.mkDefault cfg.espMountPoint;

    # The directories the bind mount and the host keys need, on a state file system of any age.
    systemd.services.bty-state-layout = {
      description = "bty: directories on the bty-state partition";
      unitConfig = {
        DefaultDependencies = false;
        RequiresMountsFor = [ persistent ];
      };
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
      script = ''
        mkdir -p ${persistent}/bty
        install -d -m 0700 -o root -g root ${persistent}/ssh
      '';
    };

    systemd.services.bty-secrets = {
      description = "bty: unpack this host's secrets from the bty-secrets partition";
      wantedBy = [ "multi-user.target" ];
      requires = [ secretsDeviceUnit ];
      after = [ secretsDeviceUnit ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        UMask = "0077";
      };
      # The system credential store is where bty-web imports an admin password from, and a
      # host without one still starts bty-web.
      script = ''
        ${bty} os secrets unpack ${cfg.secretsDirectory} --device ${secretsDevice}
        if [ -f ${cfg.secretsDirectory}/bty/admin-password ]; then
          install -d -m 0700 /run/credstore
          install -m 0400 ${cfg.secretsDirectory}/bty/admin-password /run/credstore/bty-web.admin-password
        fi
      '';
    };

    services.openssh.hostKeys = hostKeys;
    # Keys from bty-secrets take the place of generated ones; a key that is not there is
    # generated by sshd's own key generation, on bty-state, on first boot.
    systemd.services.bty-ssh-host-keys = {
      description = "bty: SSH host keys from the bty-secrets partition";
      wantedBy = [ "multi-user.target" ];
      wants = [ "bty-secrets.service" ];
      after = [
        "bty-secrets.service"
        "bty-state-layout.service"
      ];
      before = [
        "sshd-keygen.service"
        "sshd.service"
      ];
      unitConfig.RequiresMountsFor = [ "${persistent}/ssh" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        UMask = "0077";
      };
      script = lib.concatMapStrings (k: ''
        src=${cfg.secretsDirectory}/ssh/${baseNameOf k.path}
        if [ -s "$src" ]; then
          install -m 0600 "$src" ${k.path}
          if [ -s "$src.pub" ]; then
            install -m 0644 "$src.pub" ${k.path}.pub
          else
            ${lib.getExe' pkgs.openssh "ssh-keygen"} -y -f ${k.path} > ${k.path}.pub
            chmod 0644 ${k.path}.pub
          fi
          echo "host key ${baseNameOf k.path} from bty-secrets"
        fi
      '') hostKeys;
    };

    # bty-web's OS page applies releases itself (the same engine as `bty os apply`): it finds the
    # disk by its partition table, writes the slot that is not booted, and stages and renames
    # boot entries in the ESP. So on this appliance, and only here, it sees the block devices and
    # is in the disk group (which owns the ESP as well), with the ESP writable in its sandbox.
    systemd.services.bty-web = {
      wants = [ "bty-secrets.service" ];
      after = [ "bty-secrets.service" ];
      serviceConfig = {
        PrivateDevices = lib.mkForce false;
        SupplementaryGroups = [ "disk" ];
        ReadWritePaths = [ cfg.espMountPoint ];
      };
    };

    systemd.services.bty-health = {
      description = "bty: health check that marks this boot good (bty os health)";
      requiredBy = [ "boot-complete.target" ];
      before = [ "boot-complete.target" ];
      wants = [ "bty-web.service" ];
      after = [ "bty-web.service" ];
      # Reboot on failure, a timeout included: a try is spent and systemd-boot falls back when
      # none is left. Not Requires= bty-web: a dependency that fails would leave this unit
      # inactive rather than failed, and nothing would reboot.
      unitConfig.FailureAction = "reboot";
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${bty} os health --url ${healthUrl} --timeout ${toString cfg.healthTimeout}";
        TimeoutStartSec = cfg.healthTimeout + 30;
      };
    };
  };
}

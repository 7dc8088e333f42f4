# server-x86: the provisioning appliance for any amd64 box (or VM) that boots UEFI, on a disk
# that updates itself A/B (PRODUCT §8; the running side is nixos-modules/bty-os.nix):
#
#   ESP          vfat: systemd-boot as BOOTX64.EFI, loader/loader.conf, EFI/Linux/bty-a_VERSION.efi
#   bty-a        root slot: ext4 with this system, bty.appliance.slotSize
#   bty-b        root slot of the same size, empty: the first update goes there
#   bty-secrets  16 MiB of zeros, an empty archive (`bty os personalize` fills it per host)
#   bty-state    ext4, grown to the end of the disk on first boot, never written by an update
#
#   nix build .#server-x86 && bty flash result/bty-server-x86.raw.zst /dev/sdX --yes
#   nix build .#server-x86-release -o release && deploy/sign-release.sh release KEY releases
#
# The release is this build's slot file system (root.img.zst) and UKI (bty.efi) with an
# unsigned manifest.json; signing happens outside Nix, where the secret key is.
{
  config,
  lib,
  pkgs,
  modulesPath,
  btyFlake,
  ...
}:

let
  efiArch = pkgs.stdenv.hostPlatform.efiArch;
  inherit (config.system.image) version;
  slotSize = config.bty.appliance.slotSize;
  uki = "${config.system.build.uki}/${config.system.boot.loader.ukiFile}";

  # A short menu, so a console can pick the other slot by hand; without a `default` line the
  # entry booted is the first in systemd-boot's order: tries left, then the newest IMAGE_VERSION
  # among the UKIs sharing IMAGE_ID=bty. No editor: the command line is the root's to choose.
  loaderConf = pkgs.writeText "loader.conf" ''
    timeout 3
    editor no
  '';

  image = config.system.build.image;

  release =
    pkgs.runCommand "bty-server-x86-release-${version}"
      {
        nativeBuildInputs = [
          pkgs.buildPackages.zstd
          pkgs.buildPackages.python3
        ];
      }
      ''
        mkdir $out
        shopt -s nullglob
        roots=(${image}/*.root.raw*)
        if [ "''${#roots[@]}" -ne 1 ]; then
          echo "expected one split root image in ${image}, found: ''${roots[*]}" >&2
          exit 1
        fi
        case "''${roots[0]}" in
          *.zst) cp "''${roots[0]}" $out/root.img.zst ;;
          *) zstd -T0 -q "''${roots[0]}" -o $out/root.img.zst ;;
        esac
        cp ${uki} $out/bty.efi

        python3 - "$out" ${version} ${pkgs.stdenv.hostPlatform.parsed.cpu.name} <<'EOF'
        import hashlib, json, os, sys

        out, version, arch = sys.argv[1:]


        def entry(role, name):
            h = hashlib.sha256()
            with open(os.path.join(out, name), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            size = os.path.getsize(os.path.join(out, name))
            return {"role": role, "name": name, "url": name, "sha256": h.hexdigest(), "size": size}


        manifest = {
            "version": version,
            "arch": arch,
            "type": "os",
            "files": [entry("root", "root.img.zst"), entry("uki", "bty.efi")],
        }
        with open(os.path.join(out, "manifest.json"), "w") as f:
            f.write(json.dumps(manifest) + "\n")
        EOF
      '';
in
{
  imports = [ "${modulesPath}/image/repart.nix" ];

  options.bty.appliance.slotSize = lib.mkOption {
    type = lib.types.strMatching "[0-9]+[KMGT]";
    default = "8G";
    description = ''
      Size of each root slot (`bty-a`, `bty-b`). Every later release's root image is written
      into a slot of this size, so it is fixed for the life of a disk: changing it makes
      releases that existing appliances cannot apply. Leave room for the system to grow.
    '';
  };

  config = {
    # IMAGE_ID and IMAGE_VERSION in the UKI's os-release are what systemd-boot sorts its entries
    # by; the version is the workspace's, as the bty package's is.
    system.image = {
      id = "bty";
      version = (lib.importTOML ../Cargo.toml).workspace.package.version;
    };

    image.repart = {
      name = "bty-server-x86";
      # The disk image keeps the name the documentation flashes; its version is inside it.
      version = null;
      compression.enable = true; # .raw.zst, which bty flash streams as it is
      # bty-a's file system on its own as well (SplitName=root): the release's root image.
      split = true;
      partitions = {
        "10-esp" = {
          contents = {
            "/EFI/BOOT/BOOT${lib.toUpper efiArch}.EFI".source =
              "${pkgs.systemd}/lib/systemd/boot/efi/systemd-boot${efiArch}.efi";
            "/EFI/Linux/bty-a_${version}.efi".source = uki;
            "/loader/loader.conf".source = loaderConf;
          };
          repartConfig = {
            Type = "esp";
            Format = "vfat";
            Label = "bty-esp";
            # Two UKIs and the one an update stages next to them.
            SizeMinBytes = "512M";
            SizeMaxBytes = "512M";
            SplitName = "-";
          };
        };
        "20-bty-a" = {
          storePaths = [ config.system.build.toplevel ];
          repartConfig = {
            Type = "root";
            Format = "ext4";
            Label = "bty-a";
            SizeMinBytes = slotSize;
            SizeMaxBytes = slotSize;
            SplitName = "root";
          };
        };
        "21-bty-b".repartConfig = {
          Type = "root";
          Label = "bty-b";
          SizeMinBytes = slotSize;
          SizeMaxBytes = slotSize;
          SplitName = "-";
        };
        "30-bty-secrets".repartConfig = {
          Type = "linux-generic";
          Label = "bty-secrets";
          SizeMinBytes = "16M";
          SizeMaxBytes = "16M";
          SplitName = "-";
        };
        # Last, so it is the one that grows into the rest of the disk.
        "40-bty-state".repartConfig = {
          Type = "linux-generic";
          Format = "ext4";
          Label = "bty-state";
          SizeMinBytes = "512M";
          SplitName = "-";
        };
      };
    };

    services.bty-appliance.enable = true;
    services.bty-appliance.os.enable = true;
    # What PXE clients boot: served from the Nix store, linked into bty-web's boot directory.
    services.bty-web.liveEnvironment = btyFlake.packages.x86_64-linux.live-x86;

    boot.loader.grub.enable = false;
    # A monitor or a serial console, whichever the machine has; the console banner says where
    # the web UI is.
    boot.kernelParams = [
      "console=tty0"
      "console=ttyS0,115200"
    ];
    hardware.enableAllHardware = true;

    system.stateVersion = "26.05";
    system.build.btyImage = image;
    system.build.btyRelease = release;
  };
}

{
  description = "bty: flash OS images onto bare-metal disks, from a USB stick or over PXE";

  inputs = {
    # A NixOS release branch: the appliances are NixOS systems and want its tested channel.
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    # crane has no inputs of its own; it is handed our nixpkgs through `crane.mkLib pkgs`.
    crane.url = "github:ipetkov/crane";
  };

  outputs =
    {
      self,
      nixpkgs,
      crane,
    }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});

      # The key appliances verify their releases with (`bty os`), built into bty: the base64 line
      # of deploy/minisign.pub, the public half of the key deploy/sign-release.sh signs with.
      # Without that file bty verifies nothing until given `--pubkey` or `[os] pubkey`.
      releasePublicKey =
        if builtins.pathExists ./deploy/minisign.pub then
          lib.last (lib.filter (l: l != "") (lib.splitString "\n" (builtins.readFile ./deploy/minisign.pub)))
        else
          null;

      buildFor =
        pkgs:
        pkgs.callPackage ./nix/package.nix {
          craneLib = crane.mkLib pkgs;
          inherit releasePublicKey;
        };

      # Every appliance and test system gets all the modules, with this flake's package.
      mkSystem =
        system: modules:
        lib.nixosSystem {
          inherit system;
          specialArgs = {
            btyFlake = self;
          };
          modules = [ self.nixosModules.default ] ++ modules;
        };

      # The outputs of one image, by the name `nix build .#NAME` uses.
      imageOutput = name: self.nixosConfigurations.${name}.config.system.build.btyImage;
    in
    {
      overlays.default = final: _prev: { bty = (buildFor final).bty; };

      # Every module's package option defaults to `pkgs.bty` (programs.bty.package), which
      # nixpkgs does not have: importing a module from the flake (rather than the file) also
      # sets it to this flake's build, so users need no overlay. The `key` lets the module
      # system import that default once however many of these modules are imported.
      nixosModules =
        let
          packageDefault = {
            key = "bty-flake#package-default";
            imports = [
              (
                { lib, pkgs, ... }:
                {
                  programs.bty.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.bty;
                }
              )
            ];
          };
          fromFlake = file: {
            imports = [
              file
              packageDefault
            ];
          };
        in
        {
          bty-web = fromFlake ./nixos-modules/bty-web.nix;
          bty-live = fromFlake ./nixos-modules/bty-live.nix;
          bty-usb = fromFlake ./nixos-modules/bty-usb.nix;
          appliance = fromFlake ./nixos-modules/appliance.nix;
          # All of them: each acts only when enabled.
          default = {
            imports = [
              self.nixosModules.bty-web
              self.nixosModules.bty-live
              self.nixosModules.bty-usb
              self.nixosModules.appliance
            ];
          };
        };

      nixosConfigurations = {
        usb-x86 = mkSystem "x86_64-linux" [ ./images/usb-x86.nix ];
        server-x86 = mkSystem "x86_64-linux" [ ./images/server-x86.nix ];
        server-rpi = mkSystem "aarch64-linux" [ ./images/server-rpi.nix ];
        live-x86 = mkSystem "x86_64-linux" [ ./images/live-x86.nix ];
        # An existing NixOS server that imports the module (see hosts/example-server).
        example-server = mkSystem "x86_64-linux" [ ./hosts/example-server/configuration.nix ];
      };

      packages = forAllSystems (
        system: pkgs:
        let
          built = buildFor pkgs;
        in
        {
          inherit (built) bty;
          default = built.bty;
          # The pinned cijoe the provisioning workflows run (the modules' default).
          cijoe = pkgs.callPackage ./nix/cijoe.nix { };
          # bty-web's OCI image (`podman load -i result`); deploy/build-image.sh without Nix.
          container = pkgs.callPackage ./nix/container.nix { bty = built.bty; };
        }
        # Image outputs exist for the system they are built for: `nix build .#server-rpi` on an
        # x86_64 machine evaluates packages.x86_64-linux.server-rpi, which is the aarch64 image
        # (it needs an aarch64 builder or binfmt emulation, as any aarch64 build there does).
        // {
          usb-x86 = imageOutput "usb-x86";
          server-x86 = imageOutput "server-x86";
          server-rpi = imageOutput "server-rpi";
          live-x86 = imageOutput "live-x86";
          # What an A/B appliance updates from, unsigned (deploy/sign-release.sh signs it).
          server-x86-release = self.nixosConfigurations.server-x86.config.system.build.btyRelease;
        }
      );

      apps = forAllSystems (
        system: pkgs:
        let
          bty = self.packages.${system}.bty;
        in
        {
          # `nix run .#sign-release -- RELEASE_DIR SECRET_KEY [OUT_BASE]`: the key stays outside
          # the store, so signing is a command, not a build.
          sign-release = {
            type = "app";
            program = lib.getExe (
              pkgs.writeShellApplication {
                name = "bty-sign-release";
                runtimeInputs = with pkgs; [
                  coreutils
                  minisign
                  python3
                ];
                # writeShellApplication writes its own shebang and `set -euo pipefail`.
                text = lib.removePrefix "#!/usr/bin/env bash\n" (builtins.readFile ./deploy/sign-release.sh);
              }
            );
            meta.description = "sign an appliance release and lay it out as a release source";
          };
          bty = {
            type = "app";
            program = lib.getExe' bty "bty";
            meta.description = "bty: flash, inspect, list disks, live agent";
          };
          bty-web = {
            type = "app";
            program = lib.getExe' bty "bty-web";
            meta.description = "bty-web: the provisioning server";
          };
          default = self.apps.${system}.bty;
        }
      );

      devShells = forAllSystems (
        system: pkgs: {
          default = pkgs.mkShell {
            inputsFrom = [ self.packages.${system}.bty ];
            packages = with pkgs; [
              # Rust toolchain (nixpkgs' stable rustc/cargo, with the tools test.sh runs).
              cargo
              rustc
              clippy
              rustfmt
              rust-analyzer
              # The plain-QEMU end-to-end suite (checks/e2e.sh) and what it asserts with.
              qemu
              OVMF
              ipxe
              python3
              gptfdisk
              util-linux
              e2fsprogs
              dosfstools
              mtools
              zstd
              xz
              bzip2
              sqlite
              # The Nix side: formatting and the module evaluation script.
              nixfmt
            ];
          };
        }
      );

      checks = forAllSystems (
        system: pkgs:
        let
          built = buildFor pkgs;
        in
        {
          bty = built.bty;
          bty-clippy = built.clippy;
          bty-tests = built.tests;
          bty-fmt = built.fmt;
        }
        # The NixOS VM tests boot x86 PXE clients (SeaBIOS and OVMF): x86_64 hosts only.
        // lib.optionalAttrs (system == "x86_64-linux") (
          import ./checks/nixos {
            inherit pkgs self;
          }
        )
      );

      formatter = forAllSystems (_system: pkgs: pkgs.nixfmt);
    };
}

# Just enough of NixOS and of pkgs for lib.evalModules to evaluate nixos-modules/*.nix with
# nixpkgs' lib alone: every NixOS option those modules set or read, declared loosely (what
# they set is kept as given, so the checks can look at it), and fake packages (attribute sets
# that pass as derivations). Our own options are the real ones, with their real types.
{ lib }:

let
  inherit (lib) mkOption types;

  fakeDrv =
    name:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
      override = _: fakeDrv name;
      meta.mainProgram = name;
    };

  loose = mkOption {
    type = types.lazyAttrsOf types.anything;
    default = { };
  };
  looseList = mkOption {
    type = types.listOf types.anything;
    default = [ ];
  };

  pkgs = {
    bty = fakeDrv "bty";
    ipxe = fakeDrv "ipxe";
    openssh = fakeDrv "openssh";
    shadow = fakeDrv "shadow";
    util-linux = fakeDrv "util-linux";
    sqlite = fakeDrv "sqlite";
    zstd = fakeDrv "zstd";
    callPackage = path: _args: fakeDrv (lib.removeSuffix ".nix" (baseNameOf path));
    # The text is kept beside the fake derivation, for checks that read a script.
    writeShellScript = name: text: fakeDrv name // { inherit text; };
    writeText = name: _text: fakeDrv name;
    runCommand = name: _env: _script: fakeDrv name;
    # pkgs.formats.toml's type accepts TOML values; `anything` accepts more, but the values
    # rendered are checked by the assertions in eval-modules.nix.
    formats.toml = _: {
      type = types.lazyAttrsOf types.anything;
      generate = name: _value: fakeDrv name;
    };
  };
in
{
  inherit pkgs fakeDrv;

  module = {
    options = {
      assertions = looseList;
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      environment = {
        etc = loose;
        systemPackages = looseList;
        sessionVariables = loose;
      };
      users = {
        users = loose;
        groups = loose;
        motd = mkOption {
          type = types.nullOr types.lines;
          default = null;
        };
        mutableUsers = mkOption {
          type = types.bool;
          default = true;
        };
      };
      security.sudo.extraRules = looseList;
      systemd = {
        # Lists of dependencies are merged as NixOS merges them (several modules order the
        # same unit); the rest of a unit is kept as given.
        services = mkOption {
          default = { };
          type = types.attrsOf (
            types.submodule {
              freeformType = types.lazyAttrsOf types.anything;
              options = lib.genAttrs [
                "after"
                "before"
                "wants"
                "requires"
                "wantedBy"
                "requiredBy"
                "conflicts"
                "path"
              ] (_: looseList);
            }
          );
        };
        repart = loose;
        settings = loose;
        enableEmergencyMode = mkOption {
          type = types.bool;
          default = true;
        };
      };
      networking = {
        firewall = loose;
        hostName = mkOption {
          type = types.str;
          default = "nixos";
        };
        useDHCP = mkOption {
          type = types.bool;
          default = true;
        };
      };
      services = {
        udev = loose;
        dnsmasq = loose;
        openssh = loose;
        avahi = loose;
        getty = mkOption {
          default = { };
          type = types.submodule {
            freeformType = types.lazyAttrsOf types.anything;
            options.loginProgram = mkOption {
              type = types.str;
              default = "/run/current-system/sw/bin/login";
            };
          };
        };
      };
      fileSystems = loose;
      ids.gids = mkOption {
        type = types.attrsOf types.int;
        default = {
          disk = 6;
        };
      };
      boot = {
        supportedFilesystems = loose;
        kernelParams = looseList;
        initrd = loose;
      };
    };
  };
}

# With a full nixpkgs checkout (and crane's): evaluates the flake's outputs without the flake
# machinery (which would fetch the locked inputs), by handing flake.nix's `outputs` the two
# inputs in the shape it uses. Every nixosConfiguration's system and image derivations are
# instantiated (evaluation only: nothing is built). Run by checks/nix-eval.sh.
{
  nixpkgs,
  crane,
}:

let
  lib = import (nixpkgs + "/lib");
  systems = [
    "x86_64-linux"
    "aarch64-linux"
  ];
  nixpkgsInput = {
    outPath = nixpkgs;
    lib = lib // {
      # What nixpkgs' flake.nix does, minus the flake metadata.
      nixosSystem = args: import (nixpkgs + "/nixos/lib/eval-config.nix") (args // { inherit lib; });
    };
    legacyPackages = lib.genAttrs systems (system: import nixpkgs { inherit system; });
  };
  craneInput = {
    mkLib = pkgs: import (crane + "/default.nix") { inherit pkgs; };
  };
  self =
    (import ../../flake.nix).outputs {
      inherit self;
      nixpkgs = nixpkgsInput;
      crane = craneInput;
    }
    // {
      outPath = ../..;
    };
in
lib.mapAttrs (name: sys: {
  toplevel = sys.config.system.build.toplevel.drvPath;
  image = if sys.config.system.build ? btyImage then sys.config.system.build.btyImage.drvPath else null;
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) sys.config.assertions);
}) self.nixosConfigurations
// {
  "packages.x86_64-linux.bty" = self.packages.x86_64-linux.bty.drvPath;
  "packages.x86_64-linux.server-x86-release" = self.packages.x86_64-linux.server-x86-release.drvPath;
  "apps.x86_64-linux.sign-release" = self.apps.x86_64-linux.sign-release.program;
  "checks.x86_64-linux" = lib.mapAttrs (_: c: c.drvPath) self.checks.x86_64-linux;
}

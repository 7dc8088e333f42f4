# The `bty` package every other module uses, and the switch that puts its commands (bty,
# bty-web, bty-tui when built) on PATH. Imported by each module of this directory; the module
# system imports a file once however many modules import it.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.programs.bty;
in
{
  options.programs.bty = {
    enable = lib.mkEnableOption "the bty commands (bty, bty-web, bty-tui) on PATH";
    # nixpkgs has no `bty`: the flake's modules set this default to the flake's own build.
    package = lib.mkPackageOption pkgs "bty" { };
  };

  config = lib.mkIf cfg.enable {
    environment.systemPackages = [ cfg.package ];
  };
}

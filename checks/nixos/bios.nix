# flash-once on SeaBIOS: see flash-once.nix.
{ pkgs, common }:
import ./flash-once.nix {
  inherit pkgs common;
  firmware = "bios";
  sameSize = true;
}

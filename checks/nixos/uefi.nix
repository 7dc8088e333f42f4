# flash-once on OVMF, onto a larger disk (the GPT backup header moves): see flash-once.nix.
{ pkgs, common }:
import ./flash-once.nix {
  inherit pkgs common;
  firmware = "uefi";
  sameSize = false;
}

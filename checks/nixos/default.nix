# NixOS VM tests for `nix flake check` (x86_64-linux): the scenarios of the plain-QEMU suite
# (checks/e2e.py) on NixOS, with the NixOS modules and images doing the serving. One file per
# scenario; lib.nix holds the LAN they share.
{ pkgs, self }:

let
  common = import ./lib.nix { inherit pkgs self; };
  scenario = file: import file { inherit pkgs common; };
in
{
  nixos-bios = scenario ./bios.nix;
  nixos-uefi = scenario ./uefi.nix;
  nixos-inventory = scenario ./inventory.nix;
  nixos-tui = scenario ./tui.nix;
  nixos-backup-restore = scenario ./backup-restore.nix;
}

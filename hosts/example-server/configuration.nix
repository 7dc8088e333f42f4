# An existing NixOS server that also provisions machines: bty-web next to whatever else it
# runs, imported as a module (no appliance image). In your own flake:
#
#   inputs.bty.url = "github:OWNER/bty";
#   nixosConfigurations.myserver = nixpkgs.lib.nixosSystem {
#     modules = [ bty.nixosModules.bty-web ./configuration.nix ];
#     specialArgs.btyFlake = bty;
#   };
{
  btyFlake,
  ...
}:

{
  imports = [ ./hardware-configuration.nix ];

  networking.hostName = "provision";

  services.bty-web = {
    enable = true;
    openFirewall = true;
    # Written by your secrets tool (agenix, sops-nix, or by hand); never in the Nix store.
    adminPasswordFile = "/var/lib/secrets/bty-admin-password";
    settings = {
      server.public_url = "http://provision.lan:8080";
      auth.session_ttl_hours = 8;
    };
    # The LAN's router keeps handing out addresses; this host adds the PXE boot offer.
    tftp.enable = true;
    proxyDhcp = {
      enable = true;
      interface = "enp1s0";
    };
    liveEnvironment = btyFlake.packages.x86_64-linux.live-x86;
  };

  # An operator account to copy images into /var/lib/bty/images.
  users.users.alice = {
    isNormalUser = true;
    extraGroups = [
      "wheel"
      "bty-web"
    ];
  };
  services.bty-web.imagesGroupWritable = true;

  services.openssh.enable = true;
  system.stateVersion = "26.05";
}

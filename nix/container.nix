# bty-web's container image from Nix (`nix build .#container`, a docker-archive that
# `podman load -i result` and `docker load` read): the same contents and paths as the OCI archive
# deploy/build-image.sh writes without Nix. bty-web and the bty CLI from the flake's
# package, CA certificates for https origins and registries, the non-root user bty (10001),
# /var/lib/bty and /var/cache/bty as volumes. dockerTools writes fixed timestamps, so the
# same inputs give the same image. OCI has no health check field: compose.yaml and the Quadlet
# unit run `bty os health`.
{
  lib,
  dockerTools,
  cacert,
  runCommand,
  bty,
}:

let
  uid = 10001;
  # /etc/passwd and friends, and the volumes' directories owned by the user.
  base = runCommand "bty-web-container-base" { } ''
    mkdir -p $out/etc $out/tmp $out/var/lib/bty $out/var/cache/bty
    chmod 1777 $out/tmp
    echo 'root:x:0:0:root:/root:/sbin/nologin' > $out/etc/passwd
    echo 'bty:x:${toString uid}:${toString uid}:bty-web:/var/lib/bty:/sbin/nologin' >> $out/etc/passwd
    printf 'root:x:0:\nbty:x:${toString uid}:\n' > $out/etc/group
    printf 'hosts: files dns\npasswd: files\ngroup: files\n' > $out/etc/nsswitch.conf
  '';
in
dockerTools.buildLayeredImage {
  name = "localhost/bty-web";
  tag = bty.version;
  contents = [
    bty
    cacert
    base
  ];
  # The paths the deploy files and deploy/build-image.sh's image use.
  extraCommands = ''
    mkdir -p usr/local/bin
    ln -s ${lib.getExe' bty "bty-web"} usr/local/bin/bty-web
    ln -s ${lib.getExe' bty "bty"} usr/local/bin/bty
  '';
  fakeRootCommands = ''
    chown -R ${toString uid}:${toString uid} var/lib/bty var/cache/bty
    chmod 0750 var/lib/bty var/cache/bty
  '';
  enableFakechroot = false;
  config = {
    User = "${toString uid}:${toString uid}";
    Entrypoint = [ "/usr/local/bin/bty-web" ];
    WorkingDir = "/var/lib/bty";
    Env = [
      "PATH=/usr/local/bin"
      "BTY_PATHS_STATE_DIR=/var/lib/bty"
      "BTY_PATHS_CACHE_DIR=/var/cache/bty"
      "BTY_SERVER_HOST=0.0.0.0"
      "SSL_CERT_FILE=${cacert}/etc/ssl/certs/ca-bundle.crt"
    ];
    ExposedPorts = {
      "8080/tcp" = { };
      "69/udp" = { };
      "67/udp" = { };
      "4011/udp" = { };
    };
    Volumes = {
      "/var/lib/bty" = { };
      "/var/cache/bty" = { };
    };
    Labels = {
      "org.opencontainers.image.title" = "bty-web";
      "org.opencontainers.image.version" = bty.version;
      "org.opencontainers.image.licenses" = "GPL-3.0-only";
      "org.opencontainers.image.source" = bty.meta.homepage or "";
    };
  };
}

# The test LAN: `router` is the LAN's DHCP server (Kea), which bty leaves alone; `server` runs
# services.bty-web with TFTP and ProxyDHCP, and serves the live-x86 image; PXE clients are
# plain QEMU machines (SeaBIOS or OVMF, QEMU's iPXE NIC ROM) on the same VLAN, started from the
# test script, because they boot over the network, not a NixOS system of their own.
# The disk they get flashed with is checks/disk's marker image: it prints
# BTY-MARKER-DISK-BOOTED and ends QEMU with status 33, so "boots the flashed disk" is observed.
{ pkgs, self }:

let
  inherit (pkgs) lib;

  marker = pkgs.runCommand "bty-marker-disk" {
    # Unwrapped binutils: the boot sector is linked as flat 16-bit code, without the flags the
    # compiler wrapper adds for programs.
    nativeBuildInputs = with pkgs; [
      binutils-unwrapped
      util-linux
      dosfstools
      mtools
      grub2_efi
      zstd
    ];
  } "bash ${../disk}/build.sh $out";

  adminPassword = "vm-test-password";
in
{
  inherit marker adminPassword;

  router = {
    virtualisation.vlans = [ 1 ];
    networking.firewall.enable = false;
    networking.interfaces.eth1.ipv4.addresses = [
      {
        address = "192.168.1.1";
        prefixLength = 24;
      }
    ];
    services.kea.dhcp4 = {
      enable = true;
      settings = {
        interfaces-config.interfaces = [ "eth1" ];
        lease-database = {
          type = "memfile";
          persist = false;
        };
        valid-lifetime = 3600;
        subnet4 = [
          {
            id = 1;
            subnet = "192.168.1.0/24";
            pools = [ { pool = "192.168.1.100 - 192.168.1.200"; } ];
          }
        ];
      };
    };
  };

  server = {
    imports = [ self.nixosModules.bty-web ];
    virtualisation.vlans = [ 1 ];
    virtualisation.memorySize = 1024;
    virtualisation.diskSize = 4096;
    networking.interfaces.eth1.ipv4.addresses = [
      {
        address = "192.168.1.2";
        prefixLength = 24;
      }
    ];
    environment.etc."bty-admin-password".text = adminPassword;
    services.bty-web = {
      enable = true;
      openFirewall = true;
      adminPasswordFile = "/etc/bty-admin-password";
      settings.server.public_url = "http://192.168.1.2:8080";
      tftp.enable = true;
      proxyDhcp = {
        enable = true;
        interface = "eth1";
      };
      liveEnvironment = self.packages.x86_64-linux.live-x86;
    };
    environment.systemPackages = with pkgs; [
      curl
      jq
      sqlite
    ];
  };

  # Python for the test scripts: the API client, the catalog, the PXE client VM.
  prelude = ''
    import hashlib, json, os, shlex, subprocess

    MARKER = "${marker}"
    QEMU = "${pkgs.qemu_test}/bin/qemu-system-x86_64"
    OVMF = "${pkgs.OVMF.fd}/FV"

    def published_sha(name):
        return open(f"{MARKER}/{name}.sha256").read().split()[0]

    def sha256_file(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        return h.hexdigest()

    def api(method, path, body=None):
        """The JSON API as an operator: logged in (cookie + CSRF token), from the server."""
        data = "" if body is None else f"-d {shlex.quote(json.dumps(body))}"
        out = server.succeed(
            f"curl -sf -b /tmp/jar -X {method} -H 'Content-Type: application/json' "
            f"-H \"X-CSRF-Token: $(cat /tmp/csrf)\" {data} http://127.0.0.1:8080{path}"
        )
        return json.loads(out) if out.strip() else None

    def login():
        server.wait_for_unit("bty-web.service")
        server.wait_for_open_port(8080)
        server.succeed(
            "curl -sf -c /tmp/jar -H 'Content-Type: application/json' "
            "-d '{\"username\":\"bty\",\"password\":\"${adminPassword}\"}' "
            "http://127.0.0.1:8080/auth/login | jq -r .csrf_token > /tmp/csrf"
        )

    def publish(name, image):
        """Puts a marker image into bty-web's images/ and catalog.toml, and reloads it."""
        server.succeed(
            f"install -D -m 0640 -o bty-web -g bty-web {MARKER}/{image} /var/lib/bty/images/{image}",
            "printf 'version = 1\\n[[images]]\\nname = \"%s\"\\nsrc = \"%s\"\\nsha256 = \"%s\"\\n' "
            f"{name} {image} {published_sha(image)} > /var/lib/bty/catalog.toml",
            "chown bty-web:bty-web /var/lib/bty/catalog.toml",
        )
        api("POST", "/catalog/reload")

    def events(mac, kind=None):
        q = f"subject={mac}&limit=500" + (f"&kind={kind}" if kind else "")
        r = api("GET", f"/events?{q}")
        return r if isinstance(r, list) else r.get("events", r.get("items", []))

    def pxe_client(name, mac, disk, firmware="bios", memory=2048):
        """A PXE client on VLAN 1: NIC first in the boot order, one virtio disk with serial
        bty-disk-0, isa-debug-exit for the marker disk's exit status."""
        cmd = [QEMU, "-m", str(memory), "-smp", "2",
               "-netdev", "vde,id=n0,sock=$QEMU_VDE_SOCKET_1",
               "-device", f"virtio-net-pci,netdev=n0,mac={mac},bootindex=1",
               "-drive", f"file={disk},format=raw,if=none,id=d0",
               "-device", "virtio-blk-pci,drive=d0,serial=bty-disk-0,bootindex=2",
               "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        if firmware == "uefi":
            vars_ = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"{name}-vars.fd")
            subprocess.run(["install", "-m", "0644", f"{OVMF}/OVMF_VARS.fd", vars_], check=True)
            cmd += ["-machine", "q35",
                    "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF}/OVMF_CODE.fd",
                    "-drive", f"if=pflash,format=raw,unit=1,file={vars_}"]
        return create_machine(" ".join(cmd), name=name)

    def disk_file(name, size, fill=None):
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), name)
        with open(path, "wb") as f:
            if fill:
                f.write(open(fill, "rb").read())
            f.truncate(size)
        return path
  '';
}

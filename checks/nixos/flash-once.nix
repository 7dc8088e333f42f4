# flash-once over PXE on one firmware (bios.nix, uefi.nix): the machine is bound to the marker
# image; its first PXE boot flashes it, reports done and reboots; the next PXE contact is told
# to boot the local disk, which prints the marker. Mirrors checks/e2e.py's l2-bios/l2-uefi scenarios.
{
  pkgs,
  common,
  firmware,
  sameSize,
}:

let
  inherit (pkgs) lib;
  image = "marker-${firmware}.img";
in
pkgs.testers.runNixOSTest {
  name = "bty-${firmware}";
  nodes = {
    inherit (common) router server;
  };
  testScript = common.prelude + ''
    start_all()
    router.wait_for_unit("kea-dhcp4-server.service")
    server.wait_until_succeeds("ss -ulnH sport = :69 | grep -q .")
    login()
    publish("marker", "${image}.zst")

    mac = "52:54:00:12:34:56"
    api("PUT", f"/machines/{mac}", {"policy": "flash-once", "image": "marker", "target_disk_serial": "bty-disk-0"})
    n = os.path.getsize(f"{MARKER}/${image}")
    # BIOS: a disk exactly the image's size, so the whole disk's digest is the image's.
    # UEFI: a larger disk, so the GPT backup header has to move to the disk's real end.
    disk = disk_file("disk.raw", n if ${lib.boolToString sameSize} else 64 << 20)

    client = pxe_client("client", mac, disk, firmware="${firmware}")
    client.start(allow_reboot=True)
    with subtest("PXE -> iPXE -> live-x86 -> agent flashes, verifies, reports done, reboots"):
        client.wait_for_console_text("bty: flash starting", timeout=900)
        client.wait_for_console_text("bty: flash complete; rebooting", timeout=900)
    with subtest("the next PXE contact boots the flashed disk"):
        client.wait_for_console_text("BTY-MARKER-DISK-BOOTED fw=${firmware}", timeout=600)
        client.wait_for_shutdown()

    with subtest("the server's record and audit log"):
        m = api("GET", f"/machines/{mac}")
        t.assertEqual(m["state"], "flashed")
        t.assertEqual(m["last_flash_status"], "done")
        t.assertTrue(m["last_flashed_at"])
        offers = [e["summary"] for e in events(mac, "pxe.offered")]
        t.assertTrue(any(": flash" in s for s in offers) and any(": local" in s for s in offers), offers)
        t.assertEqual([e["kind"] for e in events(mac)].count("machine.flashed"), 1)

    with subtest("the disk holds the image"):
        if ${lib.boolToString sameSize}:
            t.assertEqual(sha256_file(disk), published_sha("${image}"))
        else:
            raw = open(f"{MARKER}/${image}", "rb").read()
            got = open(disk, "rb").read(n)
            # LBA 0-1 (protective MBR, primary header's backup LBA) and the old backup GPT
            # legitimately differ after the backup moved.
            t.assertEqual(got[1024:n - 33 * 512], raw[1024:n - 33 * 512])
            v = subprocess.run(["${pkgs.gptfdisk}/bin/sgdisk", "-v", disk], capture_output=True, text=True)
            t.assertIn("No problems found", v.stdout)
  '';
}

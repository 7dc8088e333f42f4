# Policy inventory: the live environment reports disks and hardware, touches nothing, and the
# machine's own disk boots next. Mirrors checks/e2e.py's inventory scenario.
{ pkgs, common }:

pkgs.testers.runNixOSTest {
  name = "bty-inventory";
  nodes = {
    inherit (common) router server;
  };
  testScript = common.prelude + ''
    start_all()
    router.wait_for_unit("kea-dhcp4-server.service")
    server.wait_until_succeeds("ss -ulnH sport = :69 | grep -q .")
    login()

    mac = "52:54:00:12:34:58"
    api("PUT", f"/machines/{mac}", {"policy": "inventory"})
    # The disk already holds a bootable system: inventory must leave it as it is.
    disk = disk_file("disk.raw", 64 << 20, fill=f"{MARKER}/marker-bios.img")
    before = sha256_file(disk)

    client = pxe_client("client", mac, disk)
    client.start(allow_reboot=True)
    client.wait_for_console_text(r"bty: inventory reported \(1 disks\)", timeout=900)
    client.wait_for_console_text("BTY-MARKER-DISK-BOOTED", timeout=600)
    client.wait_for_shutdown()

    t.assertEqual(sha256_file(disk), before, "inventory left the disk untouched")
    m = api("GET", f"/machines/{mac}")
    t.assertEqual(m["state"], "inventoried")
    inv = m["inventory"] or {}
    t.assertTrue(any(d.get("serial") == "bty-disk-0" and d.get("size_bytes") == 64 << 20
                     for d in inv.get("disks", [])), inv.get("disks"))
    hw = inv.get("hardware") or {}
    t.assertGreater(hw.get("memory_bytes") or 0, 1 << 30)
    t.assertTrue(hw.get("cpu_threads", 0) >= 1 and hw.get("cpu_model"))
    t.assertTrue(any((n.get("mac") or "").lower() == mac for n in hw.get("nics", [])), hw.get("nics"))
    offers = [e["summary"] for e in sorted(events(mac, "pxe.offered"), key=lambda e: e["id"])]
    t.assertEqual(len(offers), 2, offers)
    t.assertIn("inventory", offers[0])
    t.assertIn("local", offers[1])
  '';
}

# An unknown MAC gets the default policy `tui`: the live environment boots with
# bty.mode=interactive, bty-tui-on-tty1.service takes tty1 and bty-flash-on-boot.service does
# not run. Mirrors checks/e2e.py's unknown scenario, with the TUI present.
{ pkgs, common }:

pkgs.testers.runNixOSTest {
  name = "bty-tui";
  nodes = {
    inherit (common) router server;
  };
  testScript = common.prelude + ''
    start_all()
    router.wait_for_unit("kea-dhcp4-server.service")
    server.wait_until_succeeds("ss -ulnH sport = :69 | grep -q .")
    login()

    mac = "52:54:00:ab:cd:01"
    client = pxe_client("client", mac, disk_file("disk.raw", 64 << 20))
    client.start(allow_reboot=True)
    # systemd reports units on the console, which bty-web puts on the serial port.
    client.wait_for_console_text("Started .*bty: the interactive flasher on tty1", timeout=900)
    client.sleep(10)
    client.send_monitor_command("screendump /dev/null")  # the VM is still up

    m = api("GET", f"/machines/{mac}")
    t.assertEqual(m["policy"], "tui")
    t.assertTrue(m["discovered_at"] and m["last_seen_ip"])
    t.assertIn("machine.discovered", [e["kind"] for e in events(mac)])
    offers = [e["summary"] for e in events(mac, "pxe.offered")]
    t.assertTrue(offers and all("interactive" in s for s in offers), offers)
    # The agent never ran: no plan was fetched, nothing was flashed.
    t.assertFalse([e for e in events(mac) if e["kind"].startswith("machine.flash")])
    client.crash()
  '';
}

-- Schema version 4: what the ProxyDHCP service saw of each machine, so a
-- machine that asked for a boot file but never reached the HTTP routes
-- (a TFTP problem, firmware without a driver) shows how far it got.
ALTER TABLE machines ADD COLUMN dhcp_seen_at TEXT;
ALTER TABLE machines ADD COLUMN dhcp_client TEXT;      -- BIOS PXE | UEFI PXE | UEFI HTTP | iPXE | unsupported architecture N
ALTER TABLE machines ADD COLUMN dhcp_boot_file TEXT;   -- what it was told to boot; NULL when nothing was offered

//! iPXE scripts, rendered from the handlebars files in `templates/ipxe/`
//! (compiled into the binary).

use handlebars::Handlebars;
use serde::Serialize;

use crate::config::BootConfig;
use crate::policy::{Offer, Policy};

const BOOTSTRAP: &str = include_str!("../templates/ipxe/bootstrap.ipxe");
const LIVE: &str = include_str!("../templates/ipxe/live.ipxe");
const LOCAL: &str = include_str!("../templates/ipxe/local.ipxe");
const UNAVAILABLE: &str = include_str!("../templates/ipxe/unavailable.ipxe");

/// BIOS drive `sanboot` boots when the record names none: the first disk.
pub const DEFAULT_SANBOOT_DRIVE: &str = "0x80";

pub struct Templates {
    hb: Handlebars<'static>,
    boot: BootConfig,
}

#[derive(Serialize)]
struct LiveCtx<'a> {
    base: &'a str,
    mac: &'a str,
    policy: &'a str,
    offer: &'a str,
    reason: &'a str,
    token: &'a str,
    kernel: &'a str,
    initrd: &'a str,
    squashfs: Option<&'a str>,
    extra_args: &'a str,
    interactive: bool,
}

#[derive(Serialize)]
struct LocalCtx<'a> {
    mac: &'a str,
    policy: &'a str,
    reason: &'a str,
    drive: &'a str,
}

#[derive(Serialize)]
struct SimpleCtx<'a> {
    base: &'a str,
    mac: &'a str,
    reason: &'a str,
}

/// Everything a PXE script depends on.
pub struct ScriptInput<'a> {
    pub base: &'a str,
    pub mac: &'a str,
    pub policy: Policy,
    pub offer: Offer,
    pub reason: &'a str,
    pub sanboot_drive: Option<&'a str>,
    /// The offer's token (live offers); hex, so safe on a command line.
    pub token: Option<&'a str>,
}

impl Templates {
    pub fn new(boot: BootConfig) -> Self {
        let mut hb = Handlebars::new();
        // Scripts are not HTML; every interpolated value is validated where it
        // enters the system (config, MAC parsing, catalog names).
        hb.register_escape_fn(handlebars::no_escape);
        hb.set_strict_mode(true);
        for (name, text) in
            [("bootstrap", BOOTSTRAP), ("live", LIVE), ("local", LOCAL), ("unavailable", UNAVAILABLE)]
        {
            hb.register_template_string(name, text).expect("embedded iPXE templates parse");
        }
        Templates { hb, boot }
    }

    fn render(&self, name: &str, ctx: &impl Serialize) -> String {
        self.hb.render(name, ctx).unwrap_or_else(|e| {
            // Only reachable through a broken embedded template, which the
            // snapshot tests catch; still hand iPXE something that retries.
            tracing::error!(template = name, error = %e, "iPXE template failed to render");
            "#!ipxe\necho bty: server template error, retrying\nsleep 10\nreboot\n".to_string()
        })
    }

    pub fn bootstrap(&self, base: &str) -> String {
        self.render("bootstrap", &SimpleCtx { base, mac: "", reason: "" })
    }

    pub fn pxe(&self, i: &ScriptInput<'_>) -> String {
        match i.offer {
            Offer::Local => self.render(
                "local",
                &LocalCtx {
                    mac: i.mac,
                    policy: i.policy.as_str(),
                    reason: i.reason,
                    drive: i.sanboot_drive.unwrap_or(DEFAULT_SANBOOT_DRIVE),
                },
            ),
            Offer::Flash | Offer::Inventory | Offer::Interactive => self.render(
                "live",
                &LiveCtx {
                    base: i.base,
                    mac: i.mac,
                    policy: i.policy.as_str(),
                    offer: i.offer.as_str(),
                    reason: i.reason,
                    token: i.token.unwrap_or(""),
                    kernel: &self.boot.kernel,
                    initrd: &self.boot.initrd,
                    squashfs: self.boot.squashfs.as_deref(),
                    extra_args: self.boot.extra_kernel_args.trim(),
                    interactive: i.offer == Offer::Interactive,
                },
            ),
        }
    }

    pub fn unavailable(&self, base: &str, mac: &str, reason: &str) -> String {
        self.render("unavailable", &SimpleCtx { base, mac, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(squashfs: Option<&str>, extra: &str) -> BootConfig {
        BootConfig {
            kernel: "vmlinuz".into(),
            initrd: "initrd.gz".into(),
            squashfs: squashfs.map(str::to_string),
            extra_kernel_args: extra.into(),
        }
    }

    fn input(policy: Policy, offer: Offer, drive: Option<&'static str>) -> ScriptInput<'static> {
        ScriptInput {
            base: "http://10.0.0.2:8080",
            mac: "aa:bb:cc:dd:ee:ff",
            policy,
            offer,
            reason: "why",
            sanboot_drive: drive,
            token: Some("0123abcd"),
        }
    }

    #[test]
    fn bootstrap_snapshot() {
        let t = Templates::new(boot(None, ""));
        assert_eq!(t.bootstrap("http://srv"), "#!ipxe\nchain http://srv/pxe/${mac:hexhyp}\n");
    }

    #[test]
    fn live_snapshots() {
        let t = Templates::new(boot(None, ""));
        assert_eq!(
            t.pxe(&input(Policy::Flash, Offer::Flash, None)),
            "#!ipxe\n\
             # bty: aa:bb:cc:dd:ee:ff policy=flash offer=flash\n\
             echo bty: why\n\
             kernel http://10.0.0.2:8080/boot/vmlinuz initrd=initrd.gz console=tty0 console=ttyS0,115200 \
             bty.server=http://10.0.0.2:8080 bty.mac=aa:bb:cc:dd:ee:ff bty.token=0123abcd\n\
             initrd http://10.0.0.2:8080/boot/initrd.gz\n\
             boot\n"
        );
        let t = Templates::new(boot(Some("root.squashfs"), " quiet loglevel=3 "));
        assert_eq!(
            t.pxe(&input(Policy::Tui, Offer::Interactive, None)),
            "#!ipxe\n\
             # bty: aa:bb:cc:dd:ee:ff policy=tui offer=interactive\n\
             echo bty: why\n\
             kernel http://10.0.0.2:8080/boot/vmlinuz initrd=initrd.gz console=tty0 console=ttyS0,115200 \
             bty.server=http://10.0.0.2:8080 bty.mac=aa:bb:cc:dd:ee:ff bty.token=0123abcd bty.mode=interactive \
             bty.squashfs=http://10.0.0.2:8080/boot/root.squashfs quiet loglevel=3\n\
             initrd http://10.0.0.2:8080/boot/initrd.gz\n\
             boot\n"
        );
    }

    #[test]
    fn local_snapshot() {
        let t = Templates::new(boot(None, ""));
        let want = |drive: &str| {
            format!(
                "#!ipxe\n\
                 # bty: aa:bb:cc:dd:ee:ff policy=local offer=local\n\
                 echo bty: why\n\
                 # UEFI: hand back to the firmware, which boots the next entry (the disk). A plain\n\
                 # `exit` (status 0) makes some firmware (OVMF) open its setup menu instead.\n\
                 iseq ${{platform}} efi && exit 1 || sanboot --no-describe --drive {drive} || exit 1\n"
            )
        };
        assert_eq!(t.pxe(&input(Policy::Local, Offer::Local, None)), want("0x80"));
        assert_eq!(t.pxe(&input(Policy::Local, Offer::Local, Some("0x81"))), want("0x81"));
    }

    #[test]
    fn unavailable_snapshot() {
        let t = Templates::new(boot(None, ""));
        assert_eq!(
            t.unavailable("http://srv", "aa:bb:cc:dd:ee:ff", "database busy"),
            "#!ipxe\n\
             # bty: aa:bb:cc:dd:ee:ff: the server could not decide\n\
             echo bty: the provisioning server could not answer for aa:bb:cc:dd:ee:ff: database busy\n\
             echo bty: retrying in 10 seconds\n\
             sleep 10\n\
             chain --replace --autofree http://srv/pxe/aa:bb:cc:dd:ee:ff\n"
        );
    }
}

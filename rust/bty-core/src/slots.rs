//! The appliance's A/B layout: a GPT with the EFI system partition, root
//! slots labelled `bty-a` and `bty-b`, `bty-state` (never touched by an
//! update) and optionally `bty-secrets`; which slot is booted; and the
//! slots' boot entries, `EFI/Linux/bty-<slot>_<version>[+LEFT[-DONE]].efi`,
//! named as systemd-boot's boot counting renames them.

use crate::error::{Error, Result};
use crate::partition::{Partition, PartitionTable, TableKind};

const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn parse(s: &str) -> Option<Slot> {
        match s.trim().to_ascii_lowercase().as_str() {
            "a" | "bty-a" => Some(Slot::A),
            "b" | "bty-b" => Some(Slot::B),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The GPT partition label.
    pub fn label(self) -> &'static str {
        match self {
            Slot::A => "bty-a",
            Slot::B => "bty-b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// The partitions of an appliance disk.
#[derive(Debug, Clone)]
pub struct Layout {
    pub esp: Partition,
    pub a: Partition,
    pub b: Partition,
    pub state: Option<Partition>,
    pub secrets: Option<Partition>,
}

impl Layout {
    pub fn slot(&self, s: Slot) -> &Partition {
        match s {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }
}

/// The A/B layout of a disk's partition table, or what is missing.
pub fn layout(table: &PartitionTable) -> Result<Layout> {
    if table.kind != TableKind::Gpt {
        return Err(Error::failure("an appliance disk has a GPT; this one has an MBR"));
    }
    let by_label = |l: &str| table.partitions.iter().find(|p| p.label.as_deref() == Some(l)).cloned();
    let esp = table.partitions.iter().find(|p| p.type_id.eq_ignore_ascii_case(ESP_TYPE)).cloned();
    let (Some(esp), Some(a), Some(b)) = (esp, by_label("bty-a"), by_label("bty-b")) else {
        let labels: Vec<String> =
            table.partitions.iter().map(|p| p.label.clone().unwrap_or_else(|| "(no label)".into())).collect();
        return Err(Error::failure(format!(
            "not an A/B appliance disk: it needs an EFI system partition and partitions labelled bty-a and \
             bty-b; its partitions are {}",
            labels.join(", ")
        )));
    };
    if a.size_bytes != b.size_bytes {
        return Err(Error::failure(format!(
            "the slots differ in size (bty-a {} bytes, bty-b {} bytes); an update could not fit either",
            a.size_bytes, b.size_bytes
        )));
    }
    Ok(Layout { esp, a, b, state: by_label("bty-state"), secrets: by_label("bty-secrets") })
}

/// The slot the kernel command line boots: `bty.slot=`, `root=PARTLABEL=`,
/// or `root=PARTUUID=` of one of the slots.
pub fn booted_from_cmdline(cmdline: &str, layout: &Layout) -> Option<Slot> {
    let mut found = None;
    for w in cmdline.split_whitespace() {
        if let Some(v) = w.strip_prefix("bty.slot=") {
            // `bty.slot=auto` (the release UKI's) names no slot: the other words may.
            if let Some(s) = Slot::parse(v) {
                return Some(s);
            }
            continue;
        }
        if let Some(v) = w.strip_prefix("root=PARTLABEL=") {
            found = Slot::parse(v);
        } else if let Some(v) = w.strip_prefix("root=PARTUUID=") {
            let is = |p: &Partition| p.guid.as_deref().is_some_and(|g| g.eq_ignore_ascii_case(v));
            found = if is(&layout.a) {
                Some(Slot::A)
            } else if is(&layout.b) {
                Some(Slot::B)
            } else {
                None
            };
        }
    }
    found
}

/// A slot's boot entry, from its file name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub slot: Slot,
    pub version: String,
    /// Boots left before systemd-boot gives up on it (None: blessed, no counter).
    pub tries_left: Option<u32>,
    pub tries_done: Option<u32>,
}

impl Entry {
    /// Blessed (no counter), or still has tries.
    pub fn bootable(&self) -> bool {
        self.tries_left != Some(0)
    }
}

/// `bty-b_1.2.0+3.efi`, `bty-b_1.2.0+2-1.efi`, `bty-a_1.1.0.efi`.
pub fn parse_entry(name: &str) -> Option<Entry> {
    let stem = name.strip_suffix(".efi").or_else(|| name.strip_suffix(".EFI"))?;
    let (head, counter) = match stem.rsplit_once('+') {
        Some((h, c)) => (h, Some(c)),
        None => (stem, None),
    };
    let (slot, version) = head.split_once('_')?;
    let slot = Slot::parse(slot.strip_prefix("bty-")?)?;
    crate::osupdate::parse_version(version)?;
    let (tries_left, tries_done) = match counter {
        None => (None, None),
        Some(c) => match c.split_once('-') {
            Some((l, d)) => (Some(l.parse().ok()?), Some(d.parse().ok()?)),
            None => (Some(c.parse().ok()?), None),
        },
    };
    Some(Entry { slot, version: version.to_string(), tries_left, tries_done })
}

/// The file name of a new entry: `tries` boots to prove itself.
pub fn entry_name(slot: Slot, version: &str, tries: Option<u32>) -> String {
    match tries {
        Some(t) => format!("{}_{version}+{t}.efi", slot.label()),
        None => format!("{}_{version}.efi", slot.label()),
    }
}

/// The entry systemd-boot boots when nobody chooses: entries with no tries
/// left go last, then the newest version first, then the name, as
/// systemd-boot orders entries that share a sort key (bty's UKIs all carry
/// `ID=bty`). A `default` line in loader.conf would override this; bty's
/// images do not set one.
pub fn default_entry(esp: &std::path::Path) -> Option<(String, Entry)> {
    let mut all = entries(esp);
    all.sort_by(|(xn, x), (yn, y)| {
        (x.tries_left == Some(0))
            .cmp(&(y.tries_left == Some(0)))
            .then_with(|| crate::osupdate::compare_versions(&y.version, &x.version))
            .then_with(|| yn.cmp(xn))
    });
    all.into_iter().next()
}

/// An update that failed: one slot's entry ran out of tries on a version
/// newer than the other slot's, which still boots (systemd-boot went back
/// to it). `(failed version, running version)`; no booted-slot detection
/// needed.
pub fn failed_update(esp: &std::path::Path) -> Option<(String, String)> {
    let a = slot_entry(esp, Slot::A)?.1;
    let b = slot_entry(esp, Slot::B)?.1;
    for (bad, good) in [(&a, &b), (&b, &a)] {
        if bad.tries_left == Some(0)
            && good.bootable()
            && crate::osupdate::compare_versions(&bad.version, &good.version).is_gt()
        {
            return Some((bad.version.clone(), good.version.clone()));
        }
    }
    None
}

/// The slot systemd-boot picked, from `LoaderEntrySelected` (its UTF-16
/// efivar decoded): the entry's name.
pub fn booted_from_loader_entry(entry: &str) -> Option<Slot> {
    parse_entry(entry.trim_end_matches('\0').trim()).map(|e| e.slot)
}

/// The slots' entries in an ESP's `EFI/Linux`, newest version first.
pub fn entries(esp: &std::path::Path) -> Vec<(String, Entry)> {
    let mut found: Vec<(String, Entry)> = std::fs::read_dir(esp.join("EFI").join("Linux"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            parse_entry(&name).map(|en| (name, en))
        })
        .collect();
    found.sort_by(|x, y| crate::osupdate::compare_versions(&y.1.version, &x.1.version));
    found
}

/// The newest entry of `slot` in the ESP.
pub fn slot_entry(esp: &std::path::Path, slot: Slot) -> Option<(String, Entry)> {
    entries(esp).into_iter().find(|(_, e)| e.slot == slot)
}

/// Where the ESP is mounted: the first of /efi, /boot, /boot/efi with an
/// `EFI` directory.
pub fn find_esp() -> Option<std::path::PathBuf> {
    ["/efi", "/boot", "/boot/efi"].iter().map(std::path::PathBuf::from).find(|p| p.join("EFI").is_dir())
}

/// The ESP's directory: `given`, else the first of /efi, /boot, /boot/efi
/// holding `EFI/`.
pub fn esp_dir(given: Option<&std::path::Path>) -> Result<std::path::PathBuf> {
    given.map(std::path::Path::to_path_buf).or_else(find_esp).ok_or_else(|| {
        Error::failure("the EFI system partition is not mounted at /efi, /boot or /boot/efi: pass --esp DIR")
    })
}

/// `LoaderEntrySelected` as systemd-boot left it (efivarfs: 4 attribute
/// bytes, then UTF-16LE).
pub fn loader_entry_selected() -> Option<String> {
    let raw =
        std::fs::read("/sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f")
            .ok()?;
    let units: Vec<u16> = raw.get(4..)?.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    Some(String::from_utf16_lossy(&units).trim_end_matches('\0').to_string())
}

/// The layout of `disk` (a block device or an image file).
pub fn read_layout(disk: &std::path::Path) -> Result<Layout> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(disk)
        .map_err(|e| Error::io(format!("cannot open {}", disk.display()), e))?
        .take(1 << 20)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(format!("cannot read {}", disk.display()), e))?;
    let table = crate::partition::read_table(&head)?
        .ok_or_else(|| Error::failure(format!("{} has no partition table", disk.display())))?;
    layout(&table).map_err(|e| Error::failure(format!("{}: {e}", disk.display())))
}

/// The disk of this machine with an A/B layout; more than one (a flashed
/// appliance disk attached to an appliance) is refused rather than guessed.
pub fn find_disk() -> Result<std::path::PathBuf> {
    let found: Vec<String> = crate::disks::list_disks()?
        .into_iter()
        .filter(|d| read_layout(std::path::Path::new(&d.path)).is_ok())
        .map(|d| d.path)
        .collect();
    match found.as_slice() {
        [one] => Ok(one.into()),
        [] => Err(Error::failure("no disk here has the A/B layout (bty-a, bty-b): pass --disk DEV")),
        many => Err(Error::failure(format!(
            "several disks have the A/B layout ({}): pass --disk DEV (or [os] disk) for the one this runs from",
            many.join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(n: u32, label: &str, ty: &str, size: u64, guid: &str) -> Partition {
        Partition {
            number: n,
            start_bytes: u64::from(n) << 20,
            size_bytes: size,
            type_id: ty.into(),
            type_name: None,
            label: Some(label.into()),
            guid: Some(guid.into()),
            bootable: false,
        }
    }

    fn table(parts: Vec<Partition>) -> PartitionTable {
        PartitionTable {
            kind: TableKind::Gpt,
            sector_size: 512,
            disk_guid: None,
            partitions: parts,
            gpt: None,
        }
    }

    const ROOT: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

    fn ab() -> Layout {
        layout(&table(vec![
            part(1, "ESP", ESP_TYPE, 1 << 28, "E"),
            part(2, "bty-a", ROOT, 1 << 30, "AAAA"),
            part(3, "bty-b", ROOT, 1 << 30, "BBBB"),
            part(4, "bty-state", ROOT, 1 << 32, "CCCC"),
        ]))
        .unwrap()
    }

    #[test]
    fn the_layout_is_found_by_labels_and_the_esp_type() {
        let l = ab();
        assert_eq!((l.a.number, l.b.number, l.state.as_ref().map(|p| p.number)), (2, 3, Some(4)));
        let e = layout(&table(vec![part(1, "ESP", ESP_TYPE, 1, "E"), part(2, "root", ROOT, 1, "R")]))
            .unwrap_err();
        assert!(e.to_string().contains("bty-a and bty-b") && e.to_string().contains("root"), "{e}");
        let uneven = layout(&table(vec![
            part(1, "ESP", ESP_TYPE, 1, "E"),
            part(2, "bty-a", ROOT, 1 << 30, "A"),
            part(3, "bty-b", ROOT, 1 << 29, "B"),
        ]));
        assert!(uneven.unwrap_err().to_string().contains("differ in size"));
    }

    #[test]
    fn the_booted_slot_comes_from_the_command_line() {
        let l = ab();
        assert_eq!(booted_from_cmdline("quiet root=PARTLABEL=bty-b ro", &l), Some(Slot::B));
        assert_eq!(booted_from_cmdline("root=PARTUUID=aaaa", &l), Some(Slot::A));
        assert_eq!(booted_from_cmdline("root=/dev/sda2 bty.slot=b", &l), Some(Slot::B));
        assert_eq!(booted_from_cmdline("root=/dev/sda2", &l), None);
        assert_eq!(booted_from_loader_entry("bty-a_1.1.0+1-2.efi\0"), Some(Slot::A));
    }

    #[test]
    fn entries_carry_slot_version_and_counters() {
        let e = parse_entry("bty-b_1.2.0+3.efi").unwrap();
        assert_eq!(
            (e.slot, e.version.as_str(), e.tries_left, e.tries_done),
            (Slot::B, "1.2.0", Some(3), None)
        );
        let e = parse_entry("bty-b_1.2.0+0-3.efi").unwrap();
        assert!(!e.bootable());
        let e = parse_entry("bty-a_1.1.0.efi").unwrap();
        assert!(e.bootable() && e.tries_left.is_none());
        assert_eq!(entry_name(Slot::B, "1.2.0", Some(3)), "bty-b_1.2.0+3.efi");
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("EFI/Linux")).unwrap();
        for n in ["bty-a_1.1.0.efi", "bty-b_1.2.0+2-1.efi", "bty-b_1.0.0.efi", "other.efi"] {
            std::fs::write(d.path().join("EFI/Linux").join(n), b"").unwrap();
        }
        assert_eq!(slot_entry(d.path(), Slot::B).unwrap().0, "bty-b_1.2.0+2-1.efi");
        assert_eq!(entries(d.path()).len(), 3);
        assert_eq!(default_entry(d.path()).unwrap().0, "bty-b_1.2.0+2-1.efi");
        std::fs::rename(
            d.path().join("EFI/Linux/bty-b_1.2.0+2-1.efi"),
            d.path().join("EFI/Linux/bty-b_1.2.0+0-3.efi"),
        )
        .unwrap();
        assert_eq!(default_entry(d.path()).unwrap().0, "bty-a_1.1.0.efi");
        assert_eq!(failed_update(d.path()), Some(("1.2.0".into(), "1.1.0".into())));
        for bad in ["bty-c_1.0.0.efi", "bty-a_x.efi", "bty-a_1.0.0+x.efi", "linux.efi", "bty-a_1.0.0.conf"] {
            assert_eq!(parse_entry(bad), None, "{bad}");
        }
    }
}
